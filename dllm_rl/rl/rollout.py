"""A batch of rollouts: prompts, sampled completions, rewards and advantages, sliceable into micro-batches."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from ..diffusion.likelihood import Sequences


@dataclass
class RolloutBatch:
    """G completions per prompt laid out as consecutive groups; every tensor has N rows first."""

    prompt_ids: torch.Tensor  # [N, Tp] left-padded
    prompt_mask: torch.Tensor  # [N, Tp]
    completion_ids: torch.Tensor  # [N, L]
    valid_mask: torch.Tensor  # [N, L] tokens up to and including the first stop token
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    rows: torch.Tensor  # [N] index of each row in the full rollout batch
    groups: torch.Tensor  # [N] index of each row's prompt group
    commit_step: torch.Tensor  # [N, L] sampler step that committed each token
    sample_logprobs: torch.Tensor  # [N, L] log-prob of each token under the sampling distribution
    step: int  # rollout (optimizer outer) step, keys the masks
    num_rows: int  # rows in the full rollout batch
    num_groups: int  # prompt groups in the full rollout batch
    total_valid_tokens: int  # valid tokens in the full rollout batch (token-level normalisers)

    @property
    def gen_length(self) -> int:
        return self.completion_ids.shape[1]

    def sequences(self, by_group: bool = False) -> Sequences:
        """The rows as estimator input; ``by_group`` keys masks by prompt group instead of by row."""
        if by_group:
            return Sequences(self.prompt_ids, self.prompt_mask, self.completion_ids, self.groups, self.num_groups)
        return Sequences(self.prompt_ids, self.prompt_mask, self.completion_ids, self.rows, self.num_rows)

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        """The rows ``idx`` as a micro-batch (full-batch constants kept)."""
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device | str) -> "RolloutBatch":
        """The batch with every tensor on ``device`` (the model's, so losses never mix devices)."""
        return self._map(lambda t: t.to(device))

    def _map(self, fn) -> "RolloutBatch":
        """The batch with ``fn`` applied to every tensor field (scalars kept)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def micro_batches(self, size: int):
        """Consecutive micro-batches of at most ``size`` rows."""
        n = self.completion_ids.shape[0]
        for start in range(0, n, size):
            yield torch.arange(start, min(start + size, n))


def valid_token_mask(completions: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """True for tokens up to and including the first stop token of each row."""
    is_stop = torch.zeros_like(completions, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= completions == s
    before = is_stop.long().cumsum(1) - is_stop.long()  # stops strictly before each position
    return before == 0

"""wd1 (Tang et al., 2025): weighted likelihood on d1's mean-field proxy, no ratio, no old/ref pass.

    l_theta(y_i) = sum_{k valid} phi_theta(y_ik)          (d1's one-step proxy, fresh prompt mask per iteration)
    w+_i = softmax_{j in group}(A_j)_i,   w-_i = softmax_{j in group}(-A_j)_i
    loss = (1/#groups) sum_i (w-_i - w+_i) l_theta(y_i)

Completions better than their group are pushed up, worse ones down, each group's weights summing to 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_rl.diffusion.likelihood import mean_field_logprobs
from dllm_rl.rl.algorithm import Algorithm, AlgorithmConfig


@dataclass
class WD1Config(AlgorithmConfig):
    """wd1's settings: mu 8 (its scripts), group-mean advantages without std scaling, p_mask_prompt 0.15."""

    mu: int = 8
    baseline: str = "group_mean"
    scale_adv_by_std: bool = False
    p_mask_prompt: float = 0.15

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError("p_mask_prompt must be in [0, 1)")


def group_softmax(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Softmax of ``values`` [N] within each group id of ``groups`` [N] (rows of a group need not be adjacent)."""
    out = torch.empty_like(values, dtype=torch.float32)
    for g in groups.unique():
        rows = groups == g
        out[rows] = torch.softmax(values[rows].float(), dim=0)
    return out


class WD1(Algorithm):
    progress_metrics = ("mean_field",)
    """Step metrics shown on the live progress line."""

    Config = WD1Config
    config: WD1Config

    def prepare(self, adapter, batch, micro_batch_size):
        """The group-softmax weights need whole groups, which a micro-batch may split: computed once here."""
        return {"w_pos": group_softmax(batch.advantages, batch.groups), "w_neg": group_softmax(-batch.advantages, batch.groups)}

    def loss(self, adapter, batch, cache, iteration):
        key = (self.seed, "wd1", batch.step, iteration)
        phi = mean_field_logprobs(adapter.logits, batch.sequences(), adapter.mask_id, key, p_mask_prompt=self.config.p_mask_prompt)
        ll = (phi * batch.valid_mask.to(phi.device)).sum(-1)  # l_theta(y_i) over valid tokens
        weight = (cache["w_neg"] - cache["w_pos"]).to(ll.device)
        loss = (weight * ll).sum() / batch.num_groups
        return loss, {"mean_field": float(ll.detach().mean()), "w_pos_max": float(cache["w_pos"].max())}

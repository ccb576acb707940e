"""Masked-diffusion sampler: iterative unmasking with low-confidence or random remasking,
semi-autoregressive blocks, temperature sampling with fp64 Gumbel noise (greedy at temperature 0),
and correct handling of left-padded batches: every row draws its noise from its own generator, so
a padded batch gives the same output as each row sampled alone."""
from __future__ import annotations

from dataclasses import dataclass

import torch

REMASKING = ("low_confidence", "random", "entropy", "margin")


@dataclass
class SamplerConfig:
    """Defaults follow LLaDA's evaluation protocol: blocks of 32, two tokens per step, greedy."""

    gen_length: int = 256
    steps: int | None = None
    """Denoising steps in total; None = gen_length // 2 (two tokens per step)."""
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else max(1, self.gen_length // 2)


@dataclass
class SampleOutput:
    completions: torch.Tensor  # [B, L]
    commit_step: torch.Tensor  # [B, L] denoising step at which each token was committed
    logprobs: torch.Tensor  # [B, L] log-prob of each committed token under the sampling distribution
    nfe: int  # forward passes (number of function evaluations) per row


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids [B, T] and an attention mask [B, T]."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
    return ids, mask


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of fp64 logits [..., V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def sampling_logits(raw: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """Logits of the distribution tokens are sampled from (its log-softmax is what the sampler records):
    temperature scaling (none at temperature 0, where the sampler takes the argmax), then top-k/top-p.
    Shared with objectives that re-evaluate the sampler's own distribution (AGRPO)."""
    return _filter(raw / temperature if temperature > 0 else raw, top_k, top_p)


def _transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps so that ``n_masked`` are committed in all."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _block_steps(gen_length: int, block_length: int, steps: int) -> list[tuple[int, int, int]]:
    """(start, end, steps) of each semi-autoregressive block; steps spread as evenly as possible."""
    starts = list(range(0, gen_length, block_length))
    if steps < len(starts):
        raise ValueError(f"steps ({steps}) must be at least the number of blocks ({len(starts)})")
    per = _transfer_counts(steps, len(starts))
    return [(s, min(s + block_length, gen_length), max(1, n)) for s, n in zip(starts, per)]


@torch.no_grad()
def generate(logits_fn, prompts: list[list[int]], mask_id: int, pad_id: int, cfg: SamplerConfig,
             generators: list[torch.Generator] | None = None) -> SampleOutput:
    """Sample completions of ``cfg.gen_length`` tokens for token-id ``prompts``.

    ``logits_fn(input_ids, attention_mask)`` returns position-aligned logits. ``generators`` (one per
    row) are required when temperature > 0 or remasking is random."""
    stochastic = cfg.temperature > 0 or cfg.remasking == "random"
    if stochastic and (generators is None or len(generators) != len(prompts)):
        raise ValueError("sampling with temperature > 0 or random remasking needs one generator per row")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    b, tp, length = len(prompts), prompt_ids.shape[1], cfg.gen_length
    x = torch.cat([prompt_ids, torch.full((b, length), mask_id, dtype=torch.long)], dim=1)
    attn = torch.cat([prompt_mask, torch.ones(b, length, dtype=torch.long)], dim=1)
    commit = torch.full((b, length), -1, dtype=torch.long)
    logprobs = torch.zeros(b, length)
    step = 0
    for start, end, n_steps in _block_steps(length, cfg.block_length, cfg.num_steps):
        for n_commit in _transfer_counts(end - start, n_steps):
            raw = logits_fn(x, attn)[:, tp:].double().cpu()  # fp64: low-precision Gumbel noise biases sampling
            raw[..., mask_id] = float("-inf")  # never commit the mask token itself
            logits = sampling_logits(raw, cfg.temperature, cfg.top_k, cfg.top_p)
            if cfg.temperature > 0:
                noise = torch.stack([torch.rand(logits.shape[1:], generator=g, dtype=torch.float64) for g in generators])
                gumbel = -torch.log(-torch.log(noise.clamp(min=1e-300)))
                chosen = (logits + gumbel).argmax(-1)
            else:
                chosen = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1).gather(-1, chosen[..., None]).squeeze(-1)
            if cfg.remasking == "low_confidence":  # the model's own (unfiltered) probability, as in LLaDA
                conf = torch.softmax(raw, -1).gather(-1, chosen[..., None]).squeeze(-1)
            elif cfg.remasking == "entropy":  # Dream's default: lowest entropy of the sampling distribution first
                conf = -torch.special.entr(torch.softmax(logits, -1)).sum(-1)
            elif cfg.remasking == "margin":  # Dream's topk_margin: largest gap between the two most likely tokens
                top2 = torch.softmax(logits, -1).topk(2, dim=-1).values
                conf = top2[..., 0] - top2[..., 1]
            else:
                conf = torch.stack([torch.rand(length, generator=g, dtype=torch.float64) for g in generators])
            still_masked = x[:, tp:] == mask_id
            in_block = torch.zeros(length, dtype=torch.bool)
            in_block[start:end] = True
            conf = conf.masked_fill(~(still_masked & in_block), float("-inf"))
            if n_commit > 0:
                top = conf.topk(n_commit, dim=-1).indices  # same count for every row: all rows share L
                rows = torch.arange(b)[:, None]
                x[:, tp:][rows, top] = chosen[rows, top]
                commit[rows, top] = step
                logprobs[rows, top] = logp[rows, top].float()
            step += 1
    return SampleOutput(completions=x[:, tp:].clone(), commit_step=commit, logprobs=logprobs, nfe=step)

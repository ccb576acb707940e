"""SPG: Sandwiched Policy Gradient (Wang et al., 2025).

Log-likelihoods come from block-wise masks shaped like a semi-autoregressive denoising state (earlier
blocks clean, one block partially masked, the rest masked; m draws, keyed per iteration). A completion
with positive advantage is pushed up through a lower bound, one with negative advantage pushed down
through an upper bound, so both directions optimise a bound on the right side:

    l+_i = mean over draws of the mean log-prob of masked valid tokens          (ELBO-like)
    l-_i = EUBO_beta(y_i)  |  mix: w EUBO_beta(y_i) + (1 - w) l+_i  |  elbo: l+_i
    loss = -sum_i A_i l_i |y_i| / sum_i |y_i|          (|y_i| valid tokens; no ratio, no KL)"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_rl.diffusion.likelihood import eubo_mean, masked_logprobs, masked_mean_logprob
from dllm_rl.diffusion.masking import block_masks, prompt_masks
from dllm_rl.rl.algorithm import Algorithm, AlgorithmConfig

NEGATIVE_BOUNDS = ("eubo", "mix", "elbo")


@dataclass
class SPGConfig(AlgorithmConfig):
    """SPG's settings: mu 4, m=2 block-masked draws, group-mean advantages, the mixture bound for
    negative advantages with weight 0.5 and beta_eubo 1.5 (1.0 for Sudoku via a preset), prompt tokens
    masked w.p. 0.15."""

    mu: int = 4
    baseline: str = "group_mean"
    scale_adv_by_std: bool = False
    num_mc: int = 2
    """Block-masked draws m per estimate."""
    block_length: int | None = None
    """Masking block length; None = the rollout sampler's block length (as in SPG)."""
    negative: str = "mix"
    """Bound for negative-advantage completions: eubo, mix (w EUBO + (1-w) ELBO) or elbo (no sandwich)."""
    eubo_beta: float = 1.5
    mix_weight: float = 0.5
    p_mask_prompt: float = 0.15

    def __post_init__(self):
        super().__post_init__()
        if self.negative not in NEGATIVE_BOUNDS:
            raise ValueError(f"negative must be one of {', '.join(NEGATIVE_BOUNDS)}, got {self.negative!r}")
        if self.eubo_beta < 1.0:
            raise ValueError("eubo_beta must be >= 1 (the Renyi bound is an upper bound only there)")
        if not 0.0 <= self.mix_weight <= 1.0 or not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError("mix_weight must be in [0, 1] and p_mask_prompt in [0, 1)")
        if self.num_mc < 1 or (self.block_length is not None and self.block_length < 1):
            raise ValueError("num_mc and block_length must be at least 1")


class SPG(Algorithm):
    progress_metrics = ("lower_bound", "upper_bound")
    """Step metrics shown on the live progress line."""

    Config = SPGConfig
    config: SPGConfig

    def bounds(self, logits_fn, mask_id: int, batch, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower (l+) and upper (EUBO) surrogates [B] from the same block-masked forward passes."""
        c = self.config
        key = (self.seed, "spg", batch.step, iteration)
        seqs, valid = batch.sequences(), batch.valid_mask
        block = c.block_length or self.rollout.block_length
        masked = block_masks(key, seqs.rows.cpu(), valid.sum(-1).cpu(), batch.gen_length, block, c.num_mc)
        prompt = seqs.prompt_ids.masked_fill(
            prompt_masks(key, seqs.rows.cpu(), seqs.prompt_mask.cpu(), c.p_mask_prompt).to(seqs.prompt_ids.device), mask_id)
        dev = seqs.completion_ids.device
        masked, valid = masked.to(dev), valid.to(dev)
        logp = masked_logprobs(logits_fn, seqs, masked, mask_id, prompt_in=prompt)
        return masked_mean_logprob(logp, masked, valid), eubo_mean(logp, masked, valid, c.eubo_beta)

    def rows_with_gradient(self, batch):
        """Each row's term is its advantage times a bound: zero-advantage rows add nothing."""
        return batch.advantages != 0

    def loss(self, adapter, batch, cache, iteration):
        c = self.config
        lower, upper = self.bounds(adapter.logits, adapter.mask_id, batch, iteration)
        adv = batch.advantages.to(lower.device)
        if c.negative == "eubo":
            negative = upper
        elif c.negative == "mix":
            negative = c.mix_weight * upper + (1 - c.mix_weight) * lower
        else:
            negative = lower
        ll = torch.where(adv > 0, lower, negative)
        lengths = batch.valid_mask.sum(-1).float().to(lower.device)
        loss = -(adv * ll * lengths).sum() / max(batch.total_valid_tokens, 1)
        neg = adv < 0
        return loss, {"lower_bound": float(lower.detach().mean()), "upper_bound": float(upper.detach().mean()),
                      "bound_gap": float((upper - lower).detach().mean()), "neg_frac": float(neg.float().mean())}

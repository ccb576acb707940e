"""ESPO: ELBO-based Sequence-level Policy Optimization (Ou et al., 2025).

The whole completion is one action; its log-likelihood is replaced by the sequence ELBO, the
importance ratio is normalised per token, and the KL to the reference uses the k2 estimator."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_rl.diffusion.likelihood import elbo_terms
from dllm_rl.rl.algorithm import Algorithm, AlgorithmConfig
from dllm_rl.rl.kl import KL_ESTIMATORS, kl_estimate
from dllm_rl.rl.surrogate import clipped_surrogate


@dataclass
class ESPOConfig(AlgorithmConfig):
    """Defaults from the paper (Sec. 5.1, App. E): mu=8, M=2 coupled samples, eps 0.2, k2 KL."""

    mu: int = 8
    baseline: str = "leave_one_out"
    num_mc: int = 2
    """Monte-Carlo mask draws M per ELBO estimate."""
    coupled: bool = True
    stratified: bool = True
    group_masks: bool = False
    """Draw the same masks for all G completions of a prompt (common random numbers across the group):
    advantages sum to zero within a group, so ELBO noise the completions share cancels in the gradient.
    Each row's estimator stays unbiased. Off = the paper (masks shared across policies only)."""
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 1e-3
    """KL weight: 1e-3 for GSM8K up to 1e-2 for Sudoku in the paper."""
    kl: str = "k2"
    length_norm: str = "full"
    """Normalise the log-ratio by the generation length L (paper) or by each row's valid tokens."""
    masks_per: str = "iteration"
    """Fresh masks for every policy iteration (paper), or one set per rollout batch reused by all mu
    iterations, so old and reference ELBOs are computed once per rollout instead of once per iteration."""

    def __post_init__(self):
        if self.length_norm not in ("full", "valid"):
            raise ValueError(f"length_norm must be full or valid, got {self.length_norm!r}")
        if self.kl not in KL_ESTIMATORS:
            raise ValueError(f"kl must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl!r}")
        if self.masks_per not in ("iteration", "rollout"):
            raise ValueError(f"masks_per must be iteration or rollout, got {self.masks_per!r}")
        if self.num_mc < 1 or self.mu < 1:
            raise ValueError("num_mc and mu must be at least 1")


class ESPO(Algorithm):
    Config = ESPOConfig
    config: ESPOConfig

    def _elbo(self, logits_fn, mask_id: int, batch, iteration: int) -> torch.Tensor:
        """Sequence ELBO [B] with masks keyed by (seed, rollout step, iteration): shared by theta, old, ref."""
        c = self.config
        key = (self.seed, "espo-elbo", batch.step, iteration if c.masks_per == "iteration" else 0)
        seqs = batch.sequences(by_group=c.group_masks)
        return elbo_terms(logits_fn, seqs, mask_id, key, num_samples=c.num_mc,
                          coupled=c.coupled, stratified=c.stratified).sum(-1)

    def _norm(self, batch) -> torch.Tensor:
        if self.config.length_norm == "valid":
            return batch.valid_mask.sum(-1).float().clamp(min=1)
        return torch.full((batch.completion_ids.shape[0],), float(batch.gen_length))

    def prepare(self, adapter, batch, micro_batch_size):
        n, mu = batch.completion_ids.shape[0], self.config.mu
        old, ref = torch.zeros(n, mu), torch.zeros(n, mu)
        with torch.no_grad():
            for idx in batch.micro_batches(micro_batch_size):
                mb = batch.select(idx)
                per_iteration = self.config.masks_per == "iteration"
                for it in range(mu) if per_iteration else [0]:  # masks per rollout: one pass fills all mu
                    cols = slice(it, it + 1) if per_iteration else slice(None)
                    # Per iteration, iteration 0 needs no old pass: it uses the current ELBO detached.
                    if mu > 1 and (it > 0 or not per_iteration):
                        old[idx, cols] = self._elbo(adapter.logits, adapter.mask_id, mb, it).cpu()[:, None]
                    if self.config.beta > 0:
                        ref[idx, cols] = self._elbo(adapter.reference_logits, adapter.mask_id, mb, it).cpu()[:, None]
        return {"old_elbo": old, "ref_elbo": ref}

    def loss(self, adapter, batch, cache, iteration):
        c = self.config
        elbo = self._elbo(adapter.logits, adapter.mask_id, batch, iteration)
        old = elbo.detach() if iteration == 0 else cache["old_elbo"][:, iteration].to(elbo.device)
        norm = self._norm(batch).to(elbo.device)
        adv = batch.advantages.to(elbo.device)
        log_ratio = (elbo - old) / norm  # Eq. 8: per-token normalised sequence log-ratio
        pg, clipped = clipped_surrogate(log_ratio, adv, c.eps_low, c.eps_high)
        loss = pg.sum() / batch.num_rows
        kl = torch.zeros_like(elbo)
        if c.beta > 0:
            kl = kl_estimate(elbo - cache["ref_elbo"][:, iteration].to(elbo.device), c.kl) / norm
            loss = loss + c.beta * kl.sum() / batch.num_rows
        return loss, {
            "elbo": float(elbo.detach().mean()),
            "kl": float(kl.detach().mean()),
            "clip_frac": float(clipped.float().mean()),
            "ratio_mean": float(log_ratio.detach().exp().mean()),
            "ratio_max": float(log_ratio.detach().exp().max()),
        }

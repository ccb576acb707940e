"""The clipped policy-gradient family on a diffusion likelihood proxy, with the two choices the ESPO
paper ablates (Fig. 1, App. C.1) as options rather than code forks:

- ``likelihood``: ``elbo`` (per-token contributions L^k of the sequence ELBO, coupled/stratified masks)
  or ``mean_field`` (d1's one-step log-probs with random prompt masking);
- ``action``: ``sequence`` (rho_i = exp((sum_k phi_ik - sum_k phi_old_ik) / norm_i), Eq. 22/24) or
  ``token`` (rho_ik = exp(phi_ik - phi_old_ik), Eq. 21/23);

plus the KL estimator (k1/k2/k3) on the same granularity. ESPO, diffu-GRPO and token-ELBO are this
objective with their papers' defaults. Masks and prompt masks are keyed by (run seed, tag, rollout
step, policy iteration, row), shared by theta, theta_old and the reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..diffusion.likelihood import LIKELIHOODS, likelihood_terms
from .algorithm import Algorithm, AlgorithmConfig
from .kl import KL_ESTIMATORS
from .surrogate import sequence_objective, token_objective

ACTIONS = ("sequence", "token")
LENGTH_NORMS = ("full", "valid")
MASKS_PER = ("iteration", "rollout")


@dataclass
class PolicyGradientConfig(AlgorithmConfig):
    likelihood: str = "elbo"
    """Likelihood proxy: elbo or mean_field."""
    action: str = "sequence"
    """Action space: sequence (one ratio per completion) or token (one ratio per token)."""
    num_mc: int = 2
    """Monte-Carlo mask draws M per ELBO estimate."""
    coupled: bool = True
    stratified: bool = True
    group_masks: bool = False
    """Draw the same masks for all G completions of a prompt (common random numbers across the group)."""
    p_mask_prompt: float = 0.15
    """mean_field: probability of masking each prompt token (d1)."""
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    """KL weight (0 = no reference pass)."""
    kl: str = "k2"
    masks_per: str = "iteration"
    """Fresh masks for every policy iteration (paper), or one set per rollout batch reused by all mu
    iterations, so old and reference proxies cost one pass per rollout instead of one per iteration."""
    length_norm: str = "full"
    """full: every one of the L generated positions (EOS padding included) is part of the action and
    the sequence log-ratio is divided by L (ESPO); valid: only tokens up to the first EOS count as token
    actions and the sequence log-ratio is divided by their number (d1 masks the padding)."""

    def __post_init__(self):
        super().__post_init__()
        for name, value, valid in (("likelihood", self.likelihood, LIKELIHOODS), ("action", self.action, ACTIONS),
                                   ("kl", self.kl, KL_ESTIMATORS), ("length_norm", self.length_norm, LENGTH_NORMS),
                                   ("masks_per", self.masks_per, MASKS_PER)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.num_mc < 1:
            raise ValueError("num_mc must be at least 1")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError("p_mask_prompt must be in [0, 1)")
        if self.eps_low < 0 or self.eps_high < 0 or self.beta < 0:
            raise ValueError("eps_low, eps_high and beta must be non-negative")


class PolicyGradient(Algorithm):
    """GRPO-style clipped objective; see the module docstring for what the options select."""

    progress_metrics = ("kl", "clip_frac")
    """Step metrics shown on the live progress line."""

    Config: ClassVar[type[PolicyGradientConfig]] = PolicyGradientConfig
    config: PolicyGradientConfig
    mask_tag: ClassVar[str] = "policy-gradient"
    """Namespace of this objective's mask keys."""

    def _terms(self, logits_fn, mask_id: int, batch, iteration: int) -> torch.Tensor:
        """Per-token proxy terms [B, L] with masks keyed by (seed, tag, rollout step, iteration)."""
        c = self.config
        key = (self.seed, self.mask_tag, batch.step, iteration if c.masks_per == "iteration" else 0)
        return likelihood_terms(c.likelihood, logits_fn, batch.sequences(by_group=c.group_masks), mask_id, key,
                                num_samples=c.num_mc, coupled=c.coupled, stratified=c.stratified,
                                p_mask_prompt=c.p_mask_prompt)

    def _logp(self, logits_fn, mask_id: int, batch, iteration: int) -> torch.Tensor:
        """The quantity the ratio is taken of: the sequence proxy [B] or the per-token terms [B, L]."""
        terms = self._terms(logits_fn, mask_id, batch, iteration)
        return terms.sum(-1) if self.config.action == "sequence" else terms

    def rows_with_gradient(self, batch):
        """Without a KL term a row with zero advantage adds exactly zero to the loss, whatever its ratio."""
        return None if self.config.beta > 0 else batch.advantages != 0

    def prepare(self, adapter, batch, micro_batch_size):
        """Old-policy and reference proxies for every policy iteration, under no_grad."""
        c, n, mu = self.config, batch.completion_ids.shape[0], self.config.mu
        shape = (n, mu) if c.action == "sequence" else (n, mu, batch.gen_length)
        old, ref = torch.zeros(shape), torch.zeros(shape)
        with torch.no_grad():
            for idx in batch.micro_batches(micro_batch_size):
                mb = batch.select(idx)
                per_iteration = c.masks_per == "iteration"
                for it in range(mu) if per_iteration else [0]:  # masks per rollout: one pass fills all mu
                    cols = slice(it, it + 1) if per_iteration else slice(None)
                    # Per iteration, iteration 0 needs no old pass: it uses the current proxy detached.
                    if mu > 1 and (it > 0 or not per_iteration):
                        old[idx, cols] = self._logp(adapter.logits, adapter.mask_id, mb, it).cpu().unsqueeze(1)
                    if c.beta > 0:
                        ref[idx, cols] = self._logp(adapter.reference_logits, adapter.mask_id, mb, it).cpu().unsqueeze(1)
        return {f"old_{c.likelihood}": old, f"ref_{c.likelihood}": ref}

    def loss(self, adapter, batch, cache, iteration):
        c = self.config
        logp = self._logp(adapter.logits, adapter.mask_id, batch, iteration)
        dev = logp.device
        old = logp.detach() if iteration == 0 else cache[f"old_{c.likelihood}"][:, iteration].to(dev)
        ref = cache[f"ref_{c.likelihood}"][:, iteration].to(dev) if c.beta > 0 else None
        adv = batch.advantages.to(dev)
        opts = dict(eps_low=c.eps_low, eps_high=c.eps_high, beta=c.beta, kl=c.kl)
        if c.action == "sequence":
            if c.length_norm == "valid":
                norm = batch.valid_mask.sum(-1).float().clamp(min=1).to(dev)
            else:
                norm = torch.full_like(logp, float(batch.gen_length))
            loss, metrics = sequence_objective(logp, old, ref, adv, norm, batch.num_rows, **opts)
            proxy = logp
        else:
            if c.length_norm == "valid":
                weight, denom = batch.valid_mask.float().to(dev), max(batch.total_valid_tokens, 1)
            else:
                weight, denom = torch.ones_like(logp), batch.num_rows * batch.gen_length
            loss, metrics = token_objective(logp, old, ref, adv, weight, denom, **opts)
            proxy = logp.sum(-1)
        return loss, {c.likelihood: float(proxy.detach().mean()), **metrics}

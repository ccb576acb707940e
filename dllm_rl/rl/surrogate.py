"""The PPO/GRPO clipped surrogate, shared by every ratio-based objective, at the two action
granularities: one action per sequence (ESPO) or one per token (d1, token-level ELBO, AGRPO)."""
from __future__ import annotations

import torch

from .kl import kl_estimate


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and a bool tensor saying
    where clipping was active (the clipped branch was taken)."""
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def ratio_metrics(log_ratio: torch.Tensor, clipped: torch.Tensor, advantages: torch.Tensor,
                  where: torch.Tensor | None = None) -> dict[str, float]:
    """Clip fractions (all, and split by the side that clipped: low = A < 0, high = A > 0) and ratio
    statistics over the actions selected by ``where`` (all by default)."""
    log_ratio = log_ratio.detach()
    adv = advantages.expand_as(log_ratio)
    if where is not None:
        log_ratio, clipped, adv = log_ratio[where], clipped[where], adv[where]
    if log_ratio.numel() == 0:
        return {"clip_frac": 0.0, "clip_low_frac": 0.0, "clip_high_frac": 0.0, "ratio_mean": 1.0, "ratio_max": 1.0}
    ratio = log_ratio.exp()
    return {
        "clip_frac": float(clipped.float().mean()),
        "clip_low_frac": float((clipped & (adv < 0)).float().mean()),
        "clip_high_frac": float((clipped & (adv > 0)).float().mean()),
        "ratio_mean": float(ratio.mean()),
        "ratio_max": float(ratio.max()),
        "log_ratio_abs_max": float(log_ratio.abs().max()),
    }


def sequence_objective(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, advantages: torch.Tensor,
                       norm: torch.Tensor, num_rows: int, *, eps_low: float, eps_high: float, beta: float,
                       kl: str) -> tuple[torch.Tensor, dict[str, float]]:
    """One action per sequence (ESPO, Eq. 7-8 and 10): with rho_i = exp((logp_i - old_i) / norm_i),
    loss = -(1/N) sum_i min(rho_i A_i, clip(rho_i) A_i) + beta (1/N) sum_i KL_k(logp_i - ref_i) / norm_i,
    N the rows of the full rollout batch (so micro-batch losses add up to the batch loss)."""
    log_ratio = (logp - old) / norm
    pg, clipped = clipped_surrogate(log_ratio, advantages, eps_low, eps_high)
    loss = pg.sum() / num_rows
    kl_t = torch.zeros_like(logp)
    if beta > 0:
        kl_t = kl_estimate(logp - ref, kl) / norm
        loss = loss + beta * kl_t.sum() / num_rows
    return loss, {"kl": float(kl_t.detach().mean()), **ratio_metrics(log_ratio, clipped, advantages)}


def token_objective(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, advantages: torch.Tensor,
                    weight: torch.Tensor, denom: float, *, eps_low: float, eps_high: float, beta: float,
                    kl: str) -> tuple[torch.Tensor, dict[str, float]]:
    """One action per token (GRPO, Eq. 4): with rho_ik = exp(logp_ik - old_ik) and token weights w_ik
    (1 on the tokens that count, 0 elsewhere; AGRPO's Monte-Carlo weights),
    loss = sum_ik w_ik [-min(rho_ik A_i, clip(rho_ik) A_i) + beta KL_k(logp_ik - ref_ik)] / denom,
    ``denom`` the full rollout batch's normaliser (its token count)."""
    adv = advantages[:, None]
    log_ratio = logp - old
    pg, clipped = clipped_surrogate(log_ratio, adv, eps_low, eps_high)
    loss = (pg * weight).sum() / denom
    on = weight > 0
    kl_t = torch.zeros_like(logp)
    if beta > 0:
        kl_t = kl_estimate(logp - ref, kl)
        loss = loss + beta * (kl_t * weight).sum() / denom
    kl_mean = float(kl_t.detach()[on].mean()) if bool(on.any()) else 0.0
    return loss, {"kl": kl_mean, **ratio_metrics(log_ratio, clipped, adv, on)}

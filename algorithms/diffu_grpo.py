"""diffu-GRPO (d1; Zhao et al., 2025): GRPO with a per-token ratio on d1's one-step mean-field proxy.

phi(y^k) = log p(y^k | prompt with each token masked w.p. 0.15, completion fully masked), one forward
pass for all L tokens; a fresh prompt mask per policy iteration, shared by theta, theta_old and ref:

    rho_ik = exp(phi_theta(y_ik) - phi_old(y_ik))
    loss   = sum_{i,k valid} [-min(rho_ik A_i, clip(rho_ik, 1-eps, 1+eps) A_i) + beta k3_ik] / #valid tokens

The ESPO paper's "token-level + mean-field" variant (Fig. 1, orange)."""
from __future__ import annotations

from dataclasses import dataclass

from dllm_rl.rl.policy_gradient import PolicyGradient, PolicyGradientConfig


@dataclass
class DiffuGRPOConfig(PolicyGradientConfig):
    """d1's defaults: mu 12 (8 for Countdown/Sudoku, registry presets), eps 0.5, beta 0.04 with k3,
    p_mask_prompt 0.15, advantages r - group mean as in d1's code (``scale_adv_by_std=true`` divides
    by the group std, TRL's GRPO form), loss averaged over the valid tokens of the batch."""

    mu: int = 12
    baseline: str = "group_mean"
    scale_adv_by_std: bool = False
    likelihood: str = "mean_field"
    action: str = "token"
    p_mask_prompt: float = 0.15
    eps_low: float = 0.5
    eps_high: float = 0.5
    beta: float = 0.04
    kl: str = "k3"
    length_norm: str = "valid"


class DiffuGRPO(PolicyGradient):
    Config = DiffuGRPOConfig
    config: DiffuGRPOConfig
    mask_tag = "diffu-grpo"

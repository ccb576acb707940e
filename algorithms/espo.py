"""ESPO: ELBO-based Sequence-level Policy Optimization (Ou et al., 2025).

The whole completion is one action; its log-likelihood is replaced by the sequence ELBO, the
importance ratio is normalised per token, and the KL to the reference uses the k2 estimator:

    rho_i = exp((ELBO_theta(y_i) - ELBO_old(y_i)) / L)                                   (Eq. 8)
    loss  = -(1/B) sum_i min(rho_i A_i, clip(rho_i, 1-eps_low, 1+eps_high) A_i)          (Eq. 7)
            + beta (1/(B L)) sum_i 0.5 (ELBO_theta(y_i) - ELBO_ref(y_i))^2              (Eq. 10)

computed by ``dllm_rl.rl.policy_gradient`` (shared with diffu-GRPO and token-ELBO). The paper's
ablations are options: ``likelihood`` (elbo / mean_field), ``action`` (sequence / token), ``kl``."""
from __future__ import annotations

from dataclasses import dataclass

from dllm_rl.rl.policy_gradient import PolicyGradient, PolicyGradientConfig


@dataclass
class ESPOConfig(PolicyGradientConfig):
    """Defaults from the paper (Sec. 5.1, App. E): mu=8, M=2 coupled samples, eps 0.2, k2 KL."""

    mu: int = 8
    baseline: str = "leave_one_out"
    likelihood: str = "elbo"
    action: str = "sequence"
    num_mc: int = 2
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


class ESPO(PolicyGradient):
    Config = ESPOConfig
    config: ESPOConfig
    mask_tag = "espo-elbo"

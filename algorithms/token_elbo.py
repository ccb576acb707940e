"""Token-level ELBO GRPO (UniGRPO / Coupled-GRPO style; Yang et al., 2025; Gong et al., 2025).

As diffu-GRPO, but each token's log-prob is replaced by its contribution L^k to the sequence ELBO
(coupled complementary masks shared by theta, theta_old and ref, M Monte-Carlo draws):

    rho_ik = exp(L^k_theta(y_i) - L^k_old(y_i)),   same token-level clipped objective and k3 KL.

The ESPO paper's "token-level + ELBO" variant (Fig. 1, red), which it finds unstable: an individual
L^k is no conditional likelihood (Sec. 3)."""
from __future__ import annotations

from dataclasses import dataclass

from dllm_rl.rl.policy_gradient import PolicyGradient, PolicyGradientConfig


@dataclass
class TokenELBOConfig(PolicyGradientConfig):
    """d1's GRPO settings (mu 12, eps 0.5, beta 0.04 with k3, advantages r - group mean without std
    scaling, valid-token average) with the ELBO's per-token terms: M=2 coupled, stratified draws."""

    mu: int = 12
    baseline: str = "group_mean"
    scale_adv_by_std: bool = False
    likelihood: str = "elbo"
    action: str = "token"
    num_mc: int = 2
    coupled: bool = True
    stratified: bool = True
    eps_low: float = 0.5
    eps_high: float = 0.5
    beta: float = 0.04
    kl: str = "k3"
    length_norm: str = "valid"


class TokenELBO(PolicyGradient):
    Config = TokenELBOConfig
    config: TokenELBOConfig
    mask_tag = "token-elbo"

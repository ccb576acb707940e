"""KL-divergence estimators (Schulman's k1, k2, k3) on a log-ratio d = log p_theta - log p_ref."""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_ratio: torch.Tensor, kind: str = "k2") -> torch.Tensor:
    """Elementwise KL estimate. k1 = d (its gradient carries no KL signal); k2 = d^2/2 (correct
    gradient, ESPO's choice); k3 = exp(-d) - 1 + d (standard for token-level GRPO)."""
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"kl estimator must be one of {', '.join(KL_ESTIMATORS)}, got {kind!r}")

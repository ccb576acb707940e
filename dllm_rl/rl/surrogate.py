"""The PPO/GRPO clipped surrogate, shared by every ratio-based objective."""
from __future__ import annotations

import torch


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and a bool tensor saying
    where clipping was active (the clipped branch was taken)."""
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped

"""Group-relative advantages (GRPO family)."""
from __future__ import annotations

import torch

BASELINES = ("group_mean", "leave_one_out")


def group_advantages(rewards: torch.Tensor, group_size: int, baseline: str = "group_mean",
                     scale_by_std: bool = False, eps: float = 1e-4, negative_weight: float = 1.0) -> torch.Tensor:
    """Advantages for rewards [N] laid out as consecutive groups of ``group_size`` completions.

    group_mean: A_i = r_i - mean_j r_j (d1, SPG, AGRPO); leave_one_out: A_i = r_i - mean_{j!=i} r_j
    (ESPO, unbiased baseline). Optional division by the group std (GRPO's original form), and a
    weight on negative advantages (asymmetric REINFORCE; 1 = the usual symmetric form, 0 = positive only)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if group_size < 2:
        raise ValueError("group-relative advantages need group_size >= 2")
    r = rewards.float().view(-1, group_size)
    total = r.sum(1, keepdim=True)
    if baseline == "group_mean":
        adv = r - total / group_size
    else:
        adv = r - (total - r) / (group_size - 1)
    if scale_by_std:
        adv = adv / (r.std(1, keepdim=True) + eps)
    if negative_weight != 1.0:
        adv = torch.where(adv < 0, adv * negative_weight, adv)
    return adv.view(-1)


def zero_variance_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no policy-gradient signal)."""
    r = rewards.float().view(-1, group_size)
    return float((r.max(1).values == r.min(1).values).float().mean())

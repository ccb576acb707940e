"""Group-relative advantages, checked by hand."""
import pytest
import torch

from dllm_rl.rl.advantages import group_advantages, zero_variance_fraction

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])


def test_group_mean_baseline():
    adv = group_advantages(REWARDS, 4, "group_mean")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))


def test_leave_one_out_baseline():
    adv = group_advantages(REWARDS, 4, "leave_one_out")
    # r_i - mean of the other three: 1 - 1/3, 0 - 2/3
    assert torch.allclose(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0]))
    # leave-one-out = G/(G-1) * group-mean advantage
    assert torch.allclose(adv, group_advantages(REWARDS, 4, "group_mean") * 4 / 3)


def test_groups_are_consecutive_rows():
    r = torch.tensor([3.0, 1.0, 10.0, 20.0])
    assert torch.allclose(group_advantages(r, 2), torch.tensor([1.0, -1.0, -5.0, 5.0]))
    assert torch.allclose(group_advantages(r, 2, "leave_one_out"), torch.tensor([2.0, -2.0, -10.0, 10.0]))


def test_scale_by_std_uses_the_group_std():
    adv = group_advantages(REWARDS, 4, "group_mean", scale_by_std=True, eps=0.0)
    std = (1 / 3) ** 0.5  # unbiased std of [1, 0, 0, 1]
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    # zero-variance group: advantages stay 0 thanks to eps (no NaN)
    adv = group_advantages(REWARDS, 4, "group_mean", scale_by_std=True)
    assert torch.isfinite(adv).all() and torch.equal(adv[4:], torch.zeros(4))
    loo = group_advantages(REWARDS, 4, "leave_one_out", scale_by_std=True, eps=0.0)
    assert torch.allclose(loo[:4], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]) / std)


def test_integer_rewards_and_shape():
    adv = group_advantages(torch.tensor([1, 0, 1, 1]), 2)
    assert adv.dtype == torch.float32 and adv.shape == (4,)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(REWARDS, 4, "mean")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(REWARDS, 1)


def test_zero_variance_fraction():
    assert zero_variance_fraction(REWARDS, 4) == pytest.approx(0.5)
    assert zero_variance_fraction(REWARDS, 2) == pytest.approx(0.5)  # [1,0] [0,1] vary; [.5,.5] x2 don't
    assert zero_variance_fraction(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2) == pytest.approx(1.0)
    assert zero_variance_fraction(torch.tensor([1.0, 0.9, 0.0, 0.1]), 2) == pytest.approx(0.0)


def test_negative_weight_scales_only_negative_advantages():
    adv = group_advantages(REWARDS, 4, "leave_one_out", negative_weight=0.25)
    assert torch.allclose(adv, torch.tensor([2 / 3, -1 / 6, -1 / 6, 2 / 3, 0.0, 0.0, 0.0, 0.0]))
    positive_only = group_advantages(torch.tensor([1.0, 0.5, 0.0, 0.5]), 4, "group_mean", negative_weight=0.0)
    assert torch.allclose(positive_only, torch.tensor([0.5, 0.0, 0.0, 0.0]))
    assert torch.equal(group_advantages(REWARDS, 4, negative_weight=1.0), group_advantages(REWARDS, 4))

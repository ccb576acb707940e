"""KL estimators k1, k2, k3 on d = log p_theta - log p_ref."""
import math

import pytest
import torch

from dllm_rl.rl.kl import kl_estimate

D = torch.tensor([-1.0, 0.0, 0.5, 2.0])


def test_k1_is_the_log_ratio():
    assert torch.equal(kl_estimate(D, "k1"), D)


def test_k2_is_half_the_squared_log_ratio():
    assert torch.allclose(kl_estimate(D, "k2"), torch.tensor([0.5, 0.0, 0.125, 2.0]))


def test_k3_by_hand():
    want = torch.tensor([math.exp(1) - 1 - 1, 0.0, math.exp(-0.5) - 1 + 0.5, math.exp(-2) - 1 + 2])
    assert torch.allclose(kl_estimate(D, "k3"), want)
    assert bool((kl_estimate(D, "k3") >= 0).all())  # k3 is non-negative


def test_default_is_k2():
    assert torch.equal(kl_estimate(D), kl_estimate(D, "k2"))


def test_k2_gradient_is_the_log_ratio():
    d = D.clone().requires_grad_(True)
    kl_estimate(d, "k2").sum().backward()
    assert torch.allclose(d.grad, D)


def test_k1_and_k3_gradients():
    d = D.clone().requires_grad_(True)
    kl_estimate(d, "k1").sum().backward()
    assert torch.equal(d.grad, torch.ones_like(D))  # constant: no KL signal
    d = D.clone().requires_grad_(True)
    kl_estimate(d, "k3").sum().backward()
    assert torch.allclose(d.grad, 1 - torch.exp(-D))


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(D, "k4")

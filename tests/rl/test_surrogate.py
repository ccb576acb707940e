"""The clipped surrogate at sequence and token granularity, against hand computations."""
import math

import pytest
import torch

from dllm_rl.rl.surrogate import clipped_surrogate, ratio_metrics, sequence_objective, token_objective


def test_clipped_surrogate_by_hand():
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss, clipped = clipped_surrogate(rho.log(), adv, 0.2, 0.3)
    # A>0: min(rho, clip) ; A<0: min(-rho, -clip) -> loss = -that
    assert loss.tolist() == pytest.approx([-1.3, 1.5, -0.5, 0.8, -2.0])
    assert clipped.tolist() == [True, False, False, True, False]


def test_ratio_metrics_split_clipping_by_side():
    log_ratio = torch.tensor([1.5, 0.5, 1.0]).log()
    adv = torch.tensor([1.0, -1.0, 1.0])
    _, clipped = clipped_surrogate(log_ratio, adv, 0.2, 0.2)
    m = ratio_metrics(log_ratio, clipped, adv)
    assert (m["clip_frac"], m["clip_high_frac"], m["clip_low_frac"]) == pytest.approx((2 / 3, 1 / 3, 1 / 3))
    assert m["ratio_max"] == pytest.approx(1.5) and m["ratio_mean"] == pytest.approx(1.0)
    assert m["log_ratio_abs_max"] == pytest.approx(math.log(2))
    only = ratio_metrics(log_ratio, clipped, adv, torch.tensor([False, False, True]))
    assert only["clip_frac"] == 0.0 and only["ratio_max"] == pytest.approx(1.0)


def test_sequence_objective_by_hand():
    logp = torch.tensor([-3.0, -6.0], requires_grad=True)
    old = torch.tensor([-3.0 - 3 * math.log(1.5), -6.0])  # rho = exp((logp - old)/3) = [1.5, 1]
    ref = torch.tensor([-4.0, -6.0])
    adv = torch.tensor([1.0, -1.0])
    loss, m = sequence_objective(logp, old, ref, adv, torch.tensor([3.0, 3.0]), num_rows=4,
                                 eps_low=0.2, eps_high=0.2, beta=0.1, kl="k2")
    # pg: -min(1.5, 1.2) = -1.2 ; -(-1) = 1 ; KL: 0.5 * 1^2 / 3 and 0; over N = 4 rows of the full batch
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 4 + 0.1 * (0.5 / 3) / 4)
    assert m["kl"] == pytest.approx(0.5 / 3 / 2) and m["clip_frac"] == 0.5
    loss.backward()
    # clipped row: only the KL gradient 0.1 * (logp - ref) / 3 / 4 ; other row: -A * rho / 3 / 4
    assert logp.grad.tolist() == pytest.approx([0.1 * 1 / 3 / 4, 1 / 3 / 4])


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_token_objective_by_hand(kind):
    logp = torch.zeros(2, 2)
    old = -torch.tensor([[0.1, -0.3], [0.0, 0.2]])  # log-ratios [[0.1, -0.3], [0, 0.2]]
    ref = torch.tensor([[0.5, 0.0], [-0.2, 0.0]])   # d = logp - ref
    adv = torch.tensor([2.0, -1.0])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # last token is padding
    loss, m = token_objective(logp, old, ref, adv, weight, denom=3, eps_low=0.2, eps_high=0.2, beta=0.5, kl=kind)
    r = [math.exp(0.1), math.exp(-0.3), 1.0]
    pg = [-min(r[0] * 2, min(r[0], 1.2) * 2), -min(r[1] * 2, max(r[1], 0.8) * 2), -min(-r[2], -r[2])]
    d = [-0.5, 0.0, 0.2]
    k = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.exp(-x) - 1 + x}[kind]
    assert loss.item() == pytest.approx((sum(pg) + 0.5 * sum(map(k, d))) / 3, abs=1e-6)
    assert m["kl"] == pytest.approx(sum(map(k, d)) / 3, abs=1e-6)
    assert m["ratio_max"] == pytest.approx(math.exp(0.1))  # padding's exp(0.2) is not an action

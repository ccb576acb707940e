"""wd1 against a hand computation on the toy policy (tests/algorithms/conftest.py):

l_i = sum_{k valid} log PROBS[k][y_ik];  w+ = softmax_group(A), w- = softmax_group(-A);
loss = (1/#groups) sum_i (w-_i - w+_i) l_i."""
import math

import pytest
import torch

from dllm_rl.algorithms.wd1 import WD1, WD1Config, group_softmax

ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]  # valid: 3, 2, 3, 1 tokens
ADV = [1.0, -1.0, -0.5, 0.5]


def test_defaults():
    c = WD1Config()
    assert (c.mu, c.baseline, c.scale_adv_by_std, c.p_mask_prompt) == (8, "group_mean", False, 0.15)


def test_group_softmax_is_per_group():
    w = group_softmax(torch.tensor([1.0, -1.0, 0.0, 0.0, 2.0]), torch.tensor([0, 0, 1, 1, 0]))
    e = math.exp
    z = e(1) + e(-1) + e(2)
    assert w.tolist() == pytest.approx([e(1) / z, e(-1) / z, 0.5, 0.5, e(2) / z])


def test_loss_matches_the_hand_computation(toy):
    algo = WD1(WD1Config(mu=2), seed=0)
    adapter = toy.adapter()
    batch = toy.batch(ROWS, ADV)
    loss, metrics = algo.loss(adapter, batch, algo.prepare(adapter, batch, 4), 1)
    lg = toy.logp
    ll = [lg(0, 3) + lg(1, 4) + lg(2, 2), lg(0, 4) + lg(1, 2), lg(0, 3) + lg(1, 3) + lg(2, 2), lg(0, 2)]
    e = math.exp
    # group 1: A = (1, -1); group 2: A = (-0.5, 0.5)
    wp = [e(1) / (e(1) + e(-1)), e(-1) / (e(1) + e(-1)), e(-0.5) / (e(-0.5) + e(0.5)), e(0.5) / (e(-0.5) + e(0.5))]
    wn = [wp[1], wp[0], wp[3], wp[2]]
    want = sum((n - p) * l for n, p, l in zip(wn, wp, ll)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert metrics["mean_field"] == pytest.approx(sum(ll) / 4, abs=1e-5)


def test_zero_variance_group_has_no_gradient(toy):
    algo = WD1(seed=0)
    adapter = toy.adapter()
    batch = toy.batch([[3, 4, 2], [4, 3, 2]], [0.0, 0.0])
    loss, _ = algo.loss(adapter, batch, algo.prepare(adapter, batch, 2), 0)
    (grad,) = torch.autograd.grad(loss, [adapter.model.table])
    assert float(grad.abs().max()) == 0.0


def test_gradient_raises_positive_and_lowers_negative_completions(toy):
    algo = WD1(seed=0)
    adapter = toy.adapter()
    batch = toy.batch([[3, 4, 2], [4, 3, 2]], [1.0, -1.0])
    before = torch.tensor(toy.PROBS, dtype=torch.float64)
    loss, _ = algo.loss(adapter, batch, algo.prepare(adapter, batch, 2), 0)
    after = toy.sgd_step(adapter, loss)
    assert after[0, toy.A] > before[0, toy.A] and after[0, toy.B] < before[0, toy.B]
    assert after[1, toy.B] > before[1, toy.B] and after[1, toy.A] < before[1, toy.A]


def test_weights_come_from_whole_groups_across_micro_batches(toy):
    """A micro-batch that splits a group still uses the group's softmax weights: the micro-batch
    losses add up to the full-batch loss."""
    algo = WD1(seed=0)
    adapter = toy.adapter()
    batch = toy.batch(ROWS, ADV)
    cache = algo.prepare(adapter, batch, 4)
    full, _ = algo.loss(adapter, batch, cache, 0)
    parts = sum(algo.loss(adapter, batch.select(idx), {k: v[idx] for k, v in cache.items()}, 0)[0].item()
                for idx in batch.micro_batches(3))
    assert parts == pytest.approx(full.item(), abs=1e-6)

"""AGRPO against a hand computation on the toy policy (tests/algorithms/conftest.py).

The batch's commit steps and sampler log-probs are written by hand: old log-prob = log p_k - log rho_k,
so every token ratio is a chosen number. With all T steps revisited (weight 1 each) every token is
counted once: loss = (1/B) sum_i (1/L) sum_k [-min(rho A, clip(rho) A)]."""
import math

import pytest
import torch

from dllm_rl.algorithms.agrpo import AGRPO, AGRPOConfig
from dllm_rl.config import RolloutConfig
from dllm_rl.diffusion.masking import stratified_steps
from dllm_rl.pipeline import build_algorithm, resolve_config

SEED, STEP = 9, 4
ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]
ADV = [1.0, -1.0, -0.5, 0.5]
COMMIT = [[1, 0, 2], [0, 1, 2], [2, 1, 0], [0, 0, 1]]  # T = 3 denoising steps
RHO = [[1.1, 1.3, 0.7], [1.3, 0.7, 1.0], [1.0, 1.0, 1.0], [1.5, 1.0, 0.9]]


def make(toy, num_steps=3, temperature=1.0, **kw):
    algo = AGRPO(AGRPOConfig(num_steps=num_steps, **kw), seed=SEED)
    algo.rollout = RolloutConfig(temperature=temperature)
    old = [[toy.logp(k, t) - math.log(RHO[i][k]) for k, t in enumerate(row)] for i, row in enumerate(ROWS)]
    return algo, toy.batch(ROWS, ADV, step=STEP, commit_step=COMMIT, sample_logprobs=old)


def test_defaults_and_random_remasking_preset():
    c = AGRPOConfig()
    assert (c.mu, c.num_steps, c.eps_low, c.beta, c.baseline) == (1, 4, 0.2, 0.0, "group_mean")
    run = resolve_config("agrpo", "sudoku", "tiny", sets=("rollout.temperature=0.7",))
    assert run.rollout.remasking == "random"
    assert build_algorithm(run).rollout.temperature == 0.7  # the objective sees the rollout's sampling settings


def test_loss_matches_the_hand_computation_over_all_steps(toy):
    algo, batch = make(toy)
    loss, metrics = algo.loss(toy.adapter(), batch, {}, 0)
    pg = [-1.1, -1.2, -0.7,   # A=+1: 1.1 | 1.3 -> 1.2 | 0.7 (min keeps 0.7)
          +1.3, +0.8, +1.0,   # A=-1: 1.3 (min keeps -1.3) | 0.7 -> 0.8 | 1.0
          +0.5, +0.5, +0.5,   # A=-0.5, ratio 1
          -0.6, -0.5, -0.45]  # A=+0.5: 1.5 -> 1.2 | 1.0 | 0.9
    assert loss.item() == pytest.approx(sum(pg) / (4 * 3), abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(3 / 12)
    assert metrics["ratio_max"] == pytest.approx(1.5, abs=1e-5)
    assert metrics["ratio_mean"] == pytest.approx(sum(map(sum, RHO)) / 12, abs=1e-5)


def test_one_revisited_step_is_weighted_by_its_stratum(toy):
    """num_steps=1: one uniform step s_i per row, weight T = 3: loss = (1/B) sum_i (3/L) sum_{k: commit=s_i} pg_ik."""
    algo, batch = make(toy, num_steps=1)
    loss, _ = algo.loss(toy.adapter(), batch, {}, 0)
    steps, weights = stratified_steps((SEED, "agrpo", STEP, 0), torch.arange(4), 3, 1)
    assert weights.tolist() == [[3.0]] * 4
    pg = [[-1.1, -1.2, -0.7], [1.3, 0.8, 1.0], [0.5, 0.5, 0.5], [-0.6, -0.5, -0.45]]
    want = sum(3 / 3 * pg[i][k] for i in range(4) for k in range(3) if COMMIT[i][k] == int(steps[i, 0])) / 4
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_states_are_rebuilt_from_the_commit_steps(toy):
    algo, batch = make(toy)
    adapter = toy.adapter()
    algo.loss(adapter, batch, {}, 0)
    (inputs,) = adapter.model.inputs
    completion = inputs[:, -3:].view(3, 4, 3)  # copy-major: [step, row, position]
    for s in range(3):
        for i in range(4):
            want = [ROWS[i][k] if COMMIT[i][k] < s else toy.MASK for k in range(3)]
            assert completion[s, i].tolist() == want


def test_sampling_temperature_is_applied(toy):
    """At temperature 0.5, pi(A at position 0) = 0.5^2 / (0.25^2 + 0.5^2 + 0.25^2) = 2/3."""
    algo, batch = make(toy, temperature=0.5)
    with torch.no_grad():
        logp = algo._logprobs(toy.adapter().logits, toy.MASK, batch, torch.tensor([[0]] * 4))
    assert float(logp[0, 0, 0]) == pytest.approx(math.log(2 / 3), abs=1e-6)
    assert float(logp[1, 0, 0]) == pytest.approx(math.log(1 / 6), abs=1e-6)  # B: 0.0625 / 0.375


def test_kl_to_the_reference_at_the_same_states(toy):
    """beta > 0: k2 per committed token on d = log p - log q, q the reference's probabilities."""
    ref_probs = [[1e-12, 1e-12, 0.5, 0.25, 0.25], [1e-12, 1e-12, 0.25, 0.5, 0.25], [1e-12, 1e-12, 0.6, 0.2, 0.2]]
    algo, batch = make(toy, beta=0.1, kl="k2")
    adapter = toy.adapter(ref_probs=ref_probs)
    cache = algo.prepare(adapter, batch, 4)
    loss, metrics = algo.loss(adapter, batch, cache, 0)
    pg = -1.1 - 1.2 - 0.7 + 1.3 + 0.8 + 1.0 + 1.5 - 0.6 - 0.5 - 0.45
    d = [math.log(toy.PROBS[k][t]) - math.log(ref_probs[k][t]) for row in ROWS for k, t in enumerate(row)]
    kl = sum(0.5 * x * x for x in d)
    assert loss.item() == pytest.approx((pg + 0.1 * kl) / 12, abs=1e-6)
    assert metrics["kl"] == pytest.approx(kl / 12, abs=1e-6)


def test_gradient_raises_positive_and_lowers_negative_completions(toy):
    algo = AGRPO(AGRPOConfig(num_steps=3), seed=SEED)
    algo.rollout = RolloutConfig(temperature=1.0)  # the toy's probabilities are the sampling distribution
    adapter = toy.adapter()
    rows = [[3, 4, 2], [4, 3, 2]]
    old = [[toy.logp(k, t) for k, t in enumerate(r)] for r in rows]  # on-policy: ratio 1
    batch = toy.batch(rows, [1.0, -1.0], commit_step=[[0, 1, 2], [2, 0, 1]], sample_logprobs=old)
    before = torch.tensor(toy.PROBS, dtype=torch.float64)
    loss, metrics = algo.loss(adapter, batch, {}, 0)
    assert metrics["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    after = toy.sgd_step(adapter, loss)
    assert after[0, toy.A] > before[0, toy.A] and after[0, toy.B] < before[0, toy.B]
    assert after[1, toy.B] > before[1, toy.B] and after[1, toy.A] < before[1, toy.A]


def test_greedy_rollouts_are_refused(toy):
    algo, batch = make(toy, temperature=0.0)
    with pytest.raises(ValueError, match="temperature > 0"):
        algo.loss(toy.adapter(), batch, {}, 0)

"""diffu-GRPO (d1) against a hand computation on the toy policy (tests/algorithms/conftest.py):

phi_ik = log p(y_ik | masked prompt, all-mask completion) = log PROBS[k][y_ik] for the toy;
loss = sum_{i,k valid} [-min(rho A, clip(rho, 1-eps, 1+eps) A) + beta (exp(-d) - 1 + d)] / #valid."""
import math

import pytest
import torch

from dllm_rl.algorithms.diffu_grpo import DiffuGRPO, DiffuGRPOConfig
from dllm_rl.pipeline import resolve_config

SEED = 11


def test_defaults_follow_d1():
    c = DiffuGRPOConfig()
    assert (c.likelihood, c.action, c.kl, c.beta, c.eps_low, c.eps_high, c.mu, c.p_mask_prompt) == \
        ("mean_field", "token", "k3", 0.04, 0.5, 0.5, 12, 0.15)
    assert (c.baseline, c.scale_adv_by_std, c.length_norm) == ("group_mean", False, "valid")


def test_planning_tasks_use_mu_8():
    assert resolve_config("diffu-grpo", "sudoku", "tiny").algorithm.params["mu"] == 8
    assert resolve_config("diffu-grpo", "countdown", "tiny").algorithm.params["mu"] == 8


def test_advantages_are_std_scaled_group_mean_on_request():
    algo = DiffuGRPO(DiffuGRPOConfig(scale_adv_by_std=True), seed=SEED)
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)
    # group 1: mean 0.5, std (ddof 1) = sqrt(0.5) -> +-0.5/0.7071; group 2: zero variance -> 0
    assert adv.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0.0, 0.0])


ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]  # A B EOS | B EOS pad | A A EOS | EOS pad pad
ADV = [1.0, -1.0, -0.5, 0.5]


def test_proxy_is_the_one_step_mean_field(toy):
    algo = DiffuGRPO(DiffuGRPOConfig(mu=2), seed=SEED)
    batch = toy.batch(ROWS, ADV)
    with torch.no_grad():
        phi = algo._logp(toy.adapter().logits, toy.MASK, batch, 0)
    want = [[toy.logp(k, t) for k, t in enumerate(row)] for row in ROWS]
    assert phi.tolist() == [pytest.approx(r, abs=1e-5) for r in want]


def fabricated_cache(toy, batch, rho, d):
    """old/ref at iteration 1 such that the token ratios are ``rho`` and phi - ref = ``d``."""
    algo = DiffuGRPO(DiffuGRPOConfig(mu=2), seed=SEED)
    with torch.no_grad():
        phi = algo._logp(toy.adapter().logits, toy.MASK, batch, 1)
    old, ref = torch.zeros(4, 2, 3), torch.zeros(4, 2, 3)
    old[:, 1] = phi - torch.tensor(rho).log()
    ref[:, 1] = phi - torch.tensor(d)
    return {"old_mean_field": old, "ref_mean_field": ref}


# per-token ratios; 9.0 on padding positions, which must not count
RHO = [[1.2, 1.6, 0.4], [1.6, 0.4, 9.0], [1.0, 0.9, 1.1], [2.0, 9.0, 9.0]]
D = [[0.1, -0.2, 0.0], [0.3, 0.0, 5.0], [0.0, 0.0, 0.0], [-0.5, 5.0, 5.0]]


def test_loss_matches_the_hand_computation(toy):
    algo = DiffuGRPO(DiffuGRPOConfig(mu=2), seed=SEED)
    batch = toy.batch(ROWS, ADV)
    cache = fabricated_cache(toy, batch, RHO, D)
    loss, metrics = algo.loss(toy.adapter(), batch, cache, 1)
    # eps = 0.5: rho clipped to [0.5, 1.5]; -min(rho A, clip(rho) A) per valid token:
    pg = [-1.2, -1.5, -0.4,    # A=+1: 1.2 | 1.6 -> 1.5 | 0.4 (min keeps 0.4)
          +1.6, +0.5,          # A=-1: 1.6 (min keeps -1.6) | 0.4 -> 0.5
          +0.5, +0.45, +0.55,  # A=-0.5, all inside the clip range
          -0.75]               # A=+0.5: 2.0 -> 1.5
    k3 = sum(math.exp(-d) - 1 + d for d in [0.1, -0.2, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, -0.5])
    assert loss.item() == pytest.approx((sum(pg) + 0.04 * k3) / 9, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(3 / 9)
    assert metrics["clip_high_frac"] == pytest.approx(2 / 9) and metrics["clip_low_frac"] == pytest.approx(1 / 9)
    assert metrics["ratio_mean"] == pytest.approx(10.2 / 9, abs=1e-5) and metrics["ratio_max"] == pytest.approx(2.0, abs=1e-5)
    assert metrics["kl"] == pytest.approx(k3 / 9, abs=1e-6)


def test_gradient_raises_positive_and_lowers_negative_completions(toy):
    """Row 0 (A>0) has A at position 0 and B at 1; row 1 (A<0) the reverse: one gradient step raises
    p0(A), p1(B) and lowers p0(B), p1(A); the shared EOS at position 2 has opposite pushes that cancel."""
    algo = DiffuGRPO(DiffuGRPOConfig(mu=1), seed=SEED)
    adapter = toy.adapter()
    batch = toy.batch([[3, 4, 2], [4, 3, 2]], [1.0, -1.0])
    before = torch.tensor(toy.PROBS, dtype=torch.float64)
    loss, _ = algo.loss(adapter, batch, algo.prepare(adapter, batch, 2), 0)
    after = toy.sgd_step(adapter, loss)
    assert after[0, toy.A] > before[0, toy.A] and after[0, toy.B] < before[0, toy.B]
    assert after[1, toy.B] > before[1, toy.B] and after[1, toy.A] < before[1, toy.A]
    assert after[2, toy.EOS] == pytest.approx(float(before[2, toy.EOS]), abs=1e-6)


def test_prompt_masks_are_fresh_per_iteration_and_shared_by_policies(toy):
    """Iteration keys change the prompt mask; the reference sees the same one as the policy."""
    adapter = toy.adapter(ref_probs=toy.PROBS)
    batch = toy.batch(ROWS * 8, ADV * 8, group_size=2)  # 32 rows so that some prompt tokens get masked
    algo = DiffuGRPO(DiffuGRPOConfig(mu=3), seed=SEED)
    algo.prepare(adapter, batch, 32)  # policy: old at iterations 1, 2; reference: iterations 0, 1, 2
    old1, old2 = (ids[:, :2] for ids in adapter.model.inputs)
    ref0, ref1, ref2 = (ids[:, :2] for ids in adapter.reference_model.inputs)
    seen = [old1, old2, ref0, ref1, ref2]
    assert torch.equal(old1, ref1) and torch.equal(old2, ref2)
    assert not torch.equal(ref0, ref1) and not torch.equal(ref1, ref2)
    frac = float((torch.cat(seen) == toy.MASK).float().mean())
    assert 0.05 < frac < 0.3  # p_mask_prompt = 0.15

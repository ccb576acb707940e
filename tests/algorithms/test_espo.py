"""ESPO's loss against a hand computation of the ESPO paper's Eq. 7, 8 and 10 (as written in
algorithms/espo.py's docstring; the objective is described in docs/algorithms.md):

rho_i = exp((ELBO_theta - ELBO_old) / L),
loss = -(1/B) sum_i min(rho_i A_i, clip(rho_i, 1-eps_low, 1+eps_high) A_i)
       + beta/(B L) sum_i 0.5 (ELBO_theta - ELBO_ref)^2,
with the ELBO masks keyed by (seed, "espo-elbo", rollout step, iteration) and shared by theta/old/ref."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dllm_rl.algorithms.espo import ESPO, ESPOConfig
from dllm_rl.diffusion.likelihood import elbo_terms
from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask



PAD, MASK, EOS, VOCAB, L = 0, 1, 2, 9, 3
SEED, STEP = 7, 3


class ToyDLM(nn.Module):
    """Token + position embeddings, a masked mean over the attended context, a linear head."""

    def __init__(self, seed: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.pos = nn.Embedding(16, 8)
        self.head = nn.Linear(8, VOCAB)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = attention_mask.float()[..., None]
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self.embed(input_ids) + self.pos(pos)
        ctx = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return SimpleNamespace(logits=self.head(torch.tanh(h + ctx)))


def make_adapter(with_reference=True):
    return ModelAdapter(model=ToyDLM(0), tokenizer=None, mask_id=MASK, eos_id=EOS, pad_id=PAD, stop_ids=(EOS,),
                        reference_model=ToyDLM(1) if with_reference else None)


REWARDS = torch.tensor([1.0, 0.0, 0.2, 0.7])  # G = 2: leave-one-out A = [1, -1, -0.5, 0.5]


def make_batch(advantages):
    prompt_ids = torch.tensor([[PAD, 3, 4], [PAD, 3, 4], [5, 6, 7], [5, 6, 7]])
    prompt_mask = (prompt_ids != PAD).long()
    completion = torch.tensor([[3, 5, EOS], [6, EOS, EOS], [7, 8, 4], [4, EOS, EOS]])
    valid = valid_token_mask(completion, (EOS,))
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion, valid_mask=valid,
                        rewards=REWARDS, advantages=advantages, rows=torch.arange(4), groups=torch.arange(4) // 2,
                        commit_step=torch.zeros(4, L, dtype=torch.long), sample_logprobs=torch.zeros(4, L),
                        step=STEP, num_rows=4, num_groups=2, total_valid_tokens=int(valid.sum()))


def hand_elbo(logits_fn, batch, iteration, num_mc=2):
    return elbo_terms(logits_fn, batch.sequences(), MASK, (SEED, "espo-elbo", STEP, iteration), num_samples=num_mc,
                      coupled=True, stratified=True).sum(-1)


def hand_loss(elbo, old, ref, adv, beta, eps_low, eps_high, norm=float(L), num_rows=4):
    rho = torch.exp((elbo - old) / norm)
    pg = -torch.minimum(rho * adv, rho.clamp(1 - eps_low, 1 + eps_high) * adv)
    return pg.sum() / num_rows + beta * (0.5 * (elbo - ref) ** 2 / norm).sum() / num_rows


@pytest.fixture
def setup():
    algo = ESPO(ESPOConfig(mu=2, beta=0.1, eps_low=0.2, eps_high=0.3), seed=SEED)
    adapter = make_adapter()
    batch = make_batch(algo.advantages(REWARDS, 2))
    return algo, adapter, batch


def test_defaults_follow_the_paper():
    c = ESPOConfig()
    assert (c.mu, c.num_mc, c.coupled, c.eps_low, c.eps_high, c.kl, c.baseline) == (8, 2, True, 0.2, 0.2, "k2", "leave_one_out")


def test_leave_one_out_advantages_by_default(setup):
    algo, _, batch = setup
    assert torch.allclose(batch.advantages, torch.tensor([1.0, -1.0, -0.5, 0.5]))


def test_prepare_caches_old_and_reference_elbos(setup):
    algo, adapter, batch = setup
    cache = algo.prepare(adapter, batch, micro_batch_size=4)
    assert cache["old_elbo"].shape == (4, 2) and cache["ref_elbo"].shape == (4, 2)
    with torch.no_grad():
        for it in range(2):
            ref = hand_elbo(lambda i, a: adapter.reference_model(i, a).logits, batch, it)
            assert torch.allclose(cache["ref_elbo"][:, it], ref, atol=1e-5)
            policy = hand_elbo(adapter.logits, batch, it)
            assert not torch.allclose(policy, ref, atol=1e-2)  # the reference is really another model
        # before any update the old policy is the current one
        assert torch.allclose(cache["old_elbo"][:, 1], hand_elbo(adapter.logits, batch, 1), atol=1e-5)
    # iteration-specific masks: iteration 0 and 1 differ
    assert not torch.allclose(cache["ref_elbo"][:, 0], cache["ref_elbo"][:, 1])
    # micro-batching does not change the cache (masks keyed by row)
    small = algo.prepare(adapter, batch, micro_batch_size=1)
    for k in cache:
        assert torch.allclose(cache[k], small[k], atol=1e-5), k


def test_prepare_without_a_reference_model_uses_the_policy():
    algo = ESPO(ESPOConfig(mu=2, beta=0.1), seed=SEED)
    adapter = make_adapter(with_reference=False)
    batch = make_batch(algo.advantages(REWARDS, 2))
    cache = algo.prepare(adapter, batch, 2)
    assert torch.allclose(cache["ref_elbo"][:, 1], cache["old_elbo"][:, 1], atol=1e-5)


def test_loss_at_iteration_0_has_ratio_one(setup):
    algo, adapter, batch = setup
    cache = algo.prepare(adapter, batch, 4)
    loss, metrics = algo.loss(adapter, batch, cache, 0)
    with torch.no_grad():
        elbo = hand_elbo(adapter.logits, batch, 0)
    kl = (0.5 * (elbo - cache["ref_elbo"][:, 0]) ** 2 / L).mean()
    assert kl > 1e-3  # the KL term is not negligible in this check
    assert loss.item() == pytest.approx(float(-batch.advantages.mean() + 0.1 * kl), abs=1e-5)
    assert metrics["ratio_mean"] == pytest.approx(1.0) and metrics["clip_frac"] == 0.0
    assert metrics["elbo"] == pytest.approx(float(elbo.mean()), abs=1e-5)
    assert metrics["kl"] == pytest.approx(float(kl), abs=1e-5)


def test_loss_gradient_at_iteration_0_is_the_policy_gradient_of_the_elbo(setup):
    """With ratio 1 and beta = 0, grad loss = -(1/B) sum_i A_i grad ELBO_i / L."""
    _, adapter, batch = setup
    algo = ESPO(ESPOConfig(mu=1, beta=0.0), seed=SEED)
    loss, _ = algo.loss(adapter, batch, algo.prepare(adapter, batch, 4), 0)
    grads = torch.autograd.grad(loss, list(adapter.model.parameters()))
    surrogate = -(batch.advantages * hand_elbo(adapter.logits, batch, 0)).sum() / (4 * L)
    want = torch.autograd.grad(surrogate, list(adapter.model.parameters()))
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, atol=1e-5)
    assert any(float(g.abs().max()) > 1e-4 for g in grads)


def fabricated_cache(adapter, batch):
    """old/ref such that rho = [1.5, 1.5, 0.5, 0.9] and ELBO - ref = [0.3, -0.6, 1.2, 0] at iteration 1."""
    with torch.no_grad():
        elbo = hand_elbo(adapter.logits, batch, 1)
    rho = torch.tensor([1.5, 1.5, 0.5, 0.9])
    old = torch.zeros(4, 2)
    ref = torch.zeros(4, 2)
    old[:, 1] = elbo - L * rho.log()
    ref[:, 1] = elbo - torch.tensor([0.3, -0.6, 1.2, 0.0])
    return {"old_elbo": old, "ref_elbo": ref}, elbo


def test_loss_at_a_later_iteration_matches_the_hand_formula_with_clipping(setup):
    algo, adapter, batch = setup
    cache, elbo = fabricated_cache(adapter, batch)
    loss, metrics = algo.loss(adapter, batch, cache, 1)
    adv = batch.advantages
    want = hand_loss(elbo, cache["old_elbo"][:, 1], cache["ref_elbo"][:, 1], adv, 0.1, 0.2, 0.3)
    assert loss.item() == pytest.approx(float(want), abs=1e-5)
    # the same by hand, row by row (eps_low 0.2, eps_high 0.3, A = [1, -1, -0.5, 0.5]):
    #  rho 1.5, A>0: clipped at 1.3 -> -1.3 | rho 1.5, A<0: not clipped -> +1.5
    #  rho 0.5, A<0: clipped at 0.8 -> +0.4 | rho 0.9, inside -> -0.45
    pg = (-1.3 + 1.5 + 0.4 - 0.45) / 4
    kl = 0.1 * (0.5 * (0.09 + 0.36 + 1.44 + 0.0) / 3) / 4
    assert loss.item() == pytest.approx(pg + kl, abs=1e-5)
    assert metrics["clip_frac"] == pytest.approx(0.5)
    assert metrics["ratio_max"] == pytest.approx(1.5, abs=1e-5)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 1.5 + 0.5 + 0.9) / 4, abs=1e-5)


def test_clipped_rows_have_zero_gradient_and_the_others_do_not(setup):
    _, adapter, batch = setup
    algo = ESPO(ESPOConfig(mu=2, beta=0.0, eps_low=0.2, eps_high=0.3), seed=SEED)
    cache, _ = fabricated_cache(adapter, batch)
    for row, clipped in [(0, True), (1, False), (2, True), (3, False)]:
        idx = torch.tensor([row])
        adapter.model.zero_grad(set_to_none=True)
        loss, _ = algo.loss(adapter, batch.select(idx), {k: v[idx] for k, v in cache.items()}, 1)
        loss.backward()
        biggest = max(float(p.grad.abs().max()) if p.grad is not None else 0.0 for p in adapter.model.parameters())
        if clipped:
            assert biggest == 0.0, row
        else:
            assert biggest > 1e-4, row


def test_micro_batch_losses_sum_to_the_full_batch_loss(setup):
    algo, adapter, batch = setup
    cache, _ = fabricated_cache(adapter, batch)
    params = list(adapter.model.parameters())
    full, _ = algo.loss(adapter, batch, cache, 1)
    full_grads = torch.autograd.grad(full, params)
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    for idx in batch.micro_batches(3):
        part, _ = algo.loss(adapter, batch.select(idx), {k: v[idx] for k, v in cache.items()}, 1)
        total += part.item()
        grads = [g + d for g, d in zip(grads, torch.autograd.grad(part, params))]
    assert total == pytest.approx(full.item(), abs=1e-5)
    for g, f in zip(grads, full_grads):
        assert torch.allclose(g, f, atol=1e-5)


def test_loss_uses_the_iterations_masks(setup):
    """The current ELBO inside loss() is computed with the iteration's key (same masks as the cache)."""
    algo, adapter, batch = setup
    cache = algo.prepare(adapter, batch, 4)
    _, metrics = algo.loss(adapter, batch, cache, 1)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # theta == theta_old, same masks
    assert metrics["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        assert metrics["elbo"] == pytest.approx(float(hand_elbo(adapter.logits, batch, 1).mean()), abs=1e-5)
    shifted = ESPO(algo.config, seed=SEED + 1)  # another run seed -> other masks -> ratio != 1
    _, other = shifted.loss(adapter, batch, cache, 1)
    assert abs(other["ratio_max"] - 1.0) > 1e-4 or abs(other["ratio_mean"] - 1.0) > 1e-4


def test_valid_length_normalisation(setup):
    _, adapter, batch = setup
    algo = ESPO(ESPOConfig(mu=2, beta=0.1, eps_low=0.2, eps_high=0.3, length_norm="valid"), seed=SEED)
    cache, elbo = fabricated_cache(adapter, batch)
    loss, _ = algo.loss(adapter, batch, cache, 1)
    norm = batch.valid_mask.sum(-1).float()
    assert norm.tolist() == [3.0, 2.0, 3.0, 2.0]
    want = hand_loss(elbo, cache["old_elbo"][:, 1], cache["ref_elbo"][:, 1], batch.advantages, 0.1, 0.2, 0.3, norm=norm)
    assert loss.item() == pytest.approx(float(want), abs=1e-5)


def test_kl_estimator_option(setup):
    _, adapter, batch = setup
    algo = ESPO(ESPOConfig(mu=2, beta=0.1, kl="k3"), seed=SEED)
    cache, elbo = fabricated_cache(adapter, batch)
    loss, metrics = algo.loss(adapter, batch, cache, 1)
    d = torch.tensor([0.3, -0.6, 1.2, 0.0])
    k3 = (torch.exp(-d) - 1 + d) / L
    assert metrics["kl"] == pytest.approx(float(k3.mean()), abs=1e-5)
    rho = torch.tensor([1.5, 1.5, 0.5, 0.9])
    adv = batch.advantages
    pg = -torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
    assert loss.item() == pytest.approx(float(pg.mean() + 0.1 * k3.mean()), abs=1e-5)


def test_group_masks_share_masks_within_a_group_only(setup):
    """With group_masks the G completions of a prompt see the same masked positions (rows 0,1 and
    rows 2,3 here); without it, rows of a group get their own masks."""
    adapter, batch = make_adapter(), make_batch(torch.tensor([1.0, -1.0, -0.5, 0.5]))
    seen = []
    model = adapter.model

    class Recorder(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids[:, -L:] == MASK)
            return model(input_ids, attention_mask)

    adapter.model = Recorder()
    adapter.model.register_module("inner", model)
    for shared in (True, False):
        seen.clear()
        algo = ESPO(ESPOConfig(group_masks=shared, beta=0.0, num_mc=4), seed=SEED)
        algo.loss(adapter, batch, {}, 0)
        masks = torch.cat(seen)  # [num_mc * 2 copies * 4 rows, L]
        per_row = masks.view(-1, 4, L)
        same_in_group = bool((per_row[:, 0] == per_row[:, 1]).all() and (per_row[:, 2] == per_row[:, 3]).all())
        assert same_in_group == shared
        assert not (per_row[:, 0] == per_row[:, 2]).all()  # different groups still differ


def test_masks_per_rollout_reuse_iteration_0_masks_and_cost_one_pass_each():
    algo = ESPO(ESPOConfig(mu=3, beta=0.1, masks_per="rollout"), seed=SEED)
    adapter = make_adapter()
    batch = make_batch(algo.advantages(REWARDS, 2))
    calls = {"policy": 0, "ref": 0}
    adapter.model.register_forward_hook(lambda *_: calls.__setitem__("policy", calls["policy"] + 1))
    adapter.reference_model.register_forward_hook(lambda *_: calls.__setitem__("ref", calls["ref"] + 1))
    cache = algo.prepare(adapter, batch, micro_batch_size=4)
    assert calls == {"policy": 2, "ref": 2}  # M = 2 forward passes each, not mu * M
    with torch.no_grad():
        old0 = hand_elbo(adapter.logits, batch, 0)
        ref0 = hand_elbo(lambda i, a: adapter.reference_model(i, a).logits, batch, 0)
    for it in range(3):
        assert torch.allclose(cache["old_elbo"][:, it], old0, atol=1e-5)
        assert torch.allclose(cache["ref_elbo"][:, it], ref0, atol=1e-5)
    # every iteration's loss uses iteration 0's masks: at unchanged weights the ratio is exactly one
    _, metrics = algo.loss(adapter, batch, cache, iteration=2)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and metrics["clip_frac"] == 0.0


def test_masks_per_rejects_unknown_values():
    with pytest.raises(ValueError, match="masks_per"):
        ESPOConfig(masks_per="step")

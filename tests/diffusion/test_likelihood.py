"""Likelihood estimators against exact enumeration on a toy model: the discrete-masking ELBO
(coupled / uncoupled, stratified / not) is unbiased, its masks are shared between models and
independent of micro-batching, and the mean-field proxy masks what d1 masks."""
import itertools
import math

import pytest
import torch

from dllm_rl.diffusion.likelihood import Sequences, elbo_terms, mean_field_logprobs, token_logprobs
from dllm_rl.diffusion.masking import prompt_masks, sample_masks



PAD, MASK, VOCAB, MAX_T = 0, 1, 7, 16


def make_toy_logits(seed: int, scale: float = 0.7):
    """logits[b, i] = sum_j attn[b, j] * A[pos_i, pos_j, ids[b, j]], positions counted from the
    first real token: every token influences every prediction, and left padding is invisible."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(MAX_T, MAX_T, VOCAB, VOCAB, generator=g) * scale

    def logits_fn(input_ids, attention_mask):
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        pair = table[pos[:, :, None], pos[:, None, :], input_ids[:, None, :]]  # [B, T, T, V]
        return (pair * attention_mask[:, None, :, None].float()).sum(2)

    return logits_fn


class Recorder:
    """Wraps a logits fn and records every input it sees."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, input_ids, attention_mask):
        self.inputs.append((input_ids.clone(), attention_mask.clone()))
        return self.fn(input_ids, attention_mask)


PROMPT = [3, 4]
COMPLETION = [5, 2, 6, 3]


def replicated(n: int, prompt=PROMPT, completion=COMPLETION) -> Sequences:
    return Sequences(torch.tensor([prompt] * n), torch.ones(n, len(prompt), dtype=torch.long),
                     torch.tensor([completion] * n), torch.arange(n), n)


def subset_logps(fn, prompt, completion) -> dict:
    """log p(y^k | y with S masked, x) for every subset S of the completion (as a [L] tensor)."""
    length = len(completion)
    out = {}
    for r in range(length + 1):
        for subset in itertools.combinations(range(length), r):
            y = torch.tensor(completion)
            y_in = y.clone()
            y_in[list(subset)] = MASK
            ids = torch.tensor([prompt + y_in.tolist()])
            logits = fn(ids, torch.ones_like(ids))[0, len(prompt):]
            out[subset] = torch.log_softmax(logits.double(), -1).gather(-1, y[:, None]).squeeze(-1)
    return out


def exact_elbo(lp: dict, length: int) -> float:
    """E_{l~U{1..L}} E_{|S|=l} [(L/l) sum_{k in S} log p(y^k | y_{-S})] by enumeration."""
    total = 0.0
    for l in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), l))
        inner = sum(float(lp[s][list(s)].sum()) for s in subsets) / len(subsets)
        total += (length / l) * inner / length
    return total


def weights_by_count(length: int, coupled: bool) -> dict:
    """The weight that ``sample_masks`` attaches to a mask of each size (read back from the code)."""
    found = {}
    for step in range(20):
        masked, weight = sample_masks((0, "w", step), torch.arange(length + 1), length + 1, length,
                                      coupled=coupled, stratified=True)
        for p in range(masked.shape[1]):
            for size, w in zip(masked[:, p].sum(-1).tolist(), weight[:, p].tolist()):
                found[size] = w
    return found


@pytest.fixture(scope="module")
def toy():
    fn = make_toy_logits(0)
    lp = subset_logps(fn, PROMPT, COMPLETION)
    return fn, lp, exact_elbo(lp, len(COMPLETION))


def test_toy_enumeration_is_not_degenerate(toy):
    """The toy must make context matter, or the checks below could not tell masks apart: the exact
    ELBO is negative and differs from the one-step (everything masked) log-likelihood."""
    fn, lp, exact = toy
    full = tuple(range(len(COMPLETION)))
    assert exact < 0
    assert abs(exact - float(lp[full].sum())) > 1e-3


@pytest.mark.parametrize("length", [3, 4])
def test_coupled_estimator_expectation_equals_the_exact_elbo(length):
    """Averaging the coupled estimator over l ~ U{0..L} and all subsets of size l, with the weights
    sample_masks returns, reproduces the exact ELBO (deterministic, to 1e-5)."""
    fn = make_toy_logits(1)
    completion = COMPLETION[:length]
    lp = subset_logps(fn, PROMPT, completion)
    exact = exact_elbo(lp, length)
    w = weights_by_count(length, coupled=True)
    assert sorted(w) == list(range(length + 1))
    expectation = 0.0
    for l in range(length + 1):
        subsets = list(itertools.combinations(range(length), l))
        inner = 0.0
        for s in subsets:
            comp = tuple(k for k in range(length) if k not in s)
            inner += 0.5 * (w[l] * float(lp[s][list(s)].sum()) + w[length - l] * float(lp[comp][list(comp)].sum()))
        expectation += inner / len(subsets) / (length + 1)
    assert expectation == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("length", [3, 4])
def test_uncoupled_estimator_expectation_equals_the_exact_elbo(length):
    fn = make_toy_logits(2)
    completion = COMPLETION[:length]
    lp = subset_logps(fn, PROMPT, completion)
    exact = exact_elbo(lp, length)
    w = weights_by_count(length, coupled=False)
    assert sorted(w) == list(range(1, length + 1))
    expectation = 0.0
    for l in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), l))
        expectation += sum(w[l] * float(lp[s][list(s)].sum()) for s in subsets) / len(subsets) / length
    assert expectation == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("coupled", [True, False])
def test_elbo_terms_apply_the_sampled_masks_and_weights(toy, coupled):
    """For a fixed key, elbo_terms equals the average over its M mask draws of
    (1/P) sum_p weight_p * 1[masked_p] * log p(y | y with mask_p) — computed here from the
    enumeration table, so the estimator's expectation is the one checked above."""
    fn, lp, _ = toy
    n, length, key = 6, len(COMPLETION), (11, "e", 2)
    terms = elbo_terms(fn, replicated(n), MASK, key, num_samples=3, coupled=coupled, stratified=True)
    assert terms.shape == (n, length) and terms.dtype == torch.float32
    expected = torch.zeros(n, length, dtype=torch.float64)
    for m in range(3):
        masked, weight = sample_masks((*key, m), torch.arange(n), n, length, coupled=coupled, stratified=True)
        for i in range(n):
            for p in range(masked.shape[1]):
                subset = tuple(torch.nonzero(masked[i, p]).flatten().tolist())
                expected[i] += weight[i, p].double() * masked[i, p] * lp[subset] / masked.shape[1] / 3
    assert torch.allclose(terms.double(), expected, atol=1e-5)


@pytest.mark.parametrize("coupled,stratified", list(itertools.product([True, False], [True, False])))
def test_elbo_estimate_is_unbiased_monte_carlo(toy, coupled, stratified):
    fn, _, exact = toy
    n = 2500
    estimates = elbo_terms(fn, replicated(n), MASK, (1, "mc", int(coupled), int(stratified)), num_samples=1,
                           coupled=coupled, stratified=stratified).sum(-1).double()
    se = estimates.std() / math.sqrt(n)
    assert abs(float(estimates.mean()) - exact) < 4 * float(se) + 1e-6, (float(estimates.mean()), exact, float(se))


def test_elbo_terms_are_finite_and_non_positive(toy):
    fn, _, _ = toy
    terms = elbo_terms(fn, replicated(5), MASK, (0, "z"), num_samples=2)
    assert torch.isfinite(terms).all()
    assert bool((terms <= 0).all())  # weights are positive, log-probs negative


# -- common random numbers ----------------------------------------------------------------------

def padded_batch(n=6):
    """Rows with left-padded prompts of different lengths and different completions."""
    g = torch.Generator().manual_seed(5)
    prompt_ids = torch.randint(2, VOCAB, (n, 4), generator=g)
    prompt_mask = torch.ones(n, 4, dtype=torch.long)
    for i in range(n):
        prompt_mask[i, : i % 3] = 0
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, PAD)
    completion = torch.randint(2, VOCAB, (n, 5), generator=g)
    return Sequences(prompt_ids, prompt_mask, completion, torch.arange(n), n)


def sub(seqs: Sequences, idx: torch.Tensor) -> Sequences:
    return Sequences(seqs.prompt_ids[idx], seqs.prompt_mask[idx], seqs.completion_ids[idx], seqs.rows[idx], seqs.num_rows)


@pytest.mark.parametrize("coupled,stratified", [(True, True), (False, False)])
def test_elbo_terms_do_not_depend_on_the_micro_batch_split(coupled, stratified):
    fn = make_toy_logits(3)
    seqs = padded_batch()
    key = (0, "espo-elbo", 7, 2)
    full = elbo_terms(fn, seqs, MASK, key, coupled=coupled, stratified=stratified)
    parts = [elbo_terms(fn, sub(seqs, torch.arange(s, min(s + 4, 6))), MASK, key, coupled=coupled, stratified=stratified)
             for s in range(0, 6, 4)]
    assert torch.allclose(full, torch.cat(parts), atol=1e-6)
    singles = [elbo_terms(fn, sub(seqs, torch.tensor([i])), MASK, key, coupled=coupled, stratified=stratified) for i in range(6)]
    assert torch.allclose(full, torch.cat(singles), atol=1e-6)


def test_different_models_see_identical_masked_inputs():
    a, b = Recorder(make_toy_logits(3)), Recorder(make_toy_logits(4))
    seqs = padded_batch()
    key = (0, "espo-elbo", 1, 0)
    ea = elbo_terms(a, seqs, MASK, key, num_samples=2)
    eb = elbo_terms(b, seqs, MASK, key, num_samples=2)
    assert not torch.allclose(ea, eb)  # the models differ...
    assert len(a.inputs) == len(b.inputs) == 2
    for (ia, ma), (ib, mb) in zip(a.inputs, b.inputs):  # ...but their masked inputs do not
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    # the recorded inputs are the coupled pairs: prompt untouched, completion masked on S then on S^c
    ids, attn = a.inputs[0]
    n, tp = 6, seqs.prompt_ids.shape[1]
    assert ids.shape == (2 * n, tp + 5)
    assert torch.equal(ids[:n, :tp], seqs.prompt_ids) and torch.equal(ids[n:, :tp], seqs.prompt_ids)
    assert torch.equal(attn[:, :tp], seqs.prompt_mask.repeat(2, 1)) and bool((attn[:, tp:] == 1).all())
    first, second = ids[:n, tp:] == MASK, ids[n:, tp:] == MASK
    assert bool((first ^ second).all())
    assert torch.equal(ids[:n, tp:][~first], seqs.completion_ids[~first])
    # a different key gives different masks
    c = Recorder(make_toy_logits(3))
    elbo_terms(c, seqs, MASK, (0, "espo-elbo", 1, 1), num_samples=2)
    assert not torch.equal(c.inputs[0][0], a.inputs[0][0])


def test_token_logprobs_matches_a_manual_log_softmax():
    fn = make_toy_logits(6)
    seqs = padded_batch(3)
    completion_in = seqs.completion_ids.clone()
    completion_in[:, 1] = MASK
    got = token_logprobs(fn, seqs, completion_in)
    ids = torch.cat([seqs.prompt_ids, completion_in], 1)
    attn = torch.cat([seqs.prompt_mask, torch.ones_like(completion_in)], 1)
    logits = fn(ids, attn)[:, 4:]
    want = torch.log_softmax(logits, -1).gather(-1, seqs.completion_ids[..., None]).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-6)


# -- mean-field proxy ------------------------------------------------------------------------------

def test_mean_field_masks_the_completion_fully_and_the_prompt_at_rate_p():
    rec = Recorder(make_toy_logits(3))
    n, tp, length = 300, 10, 4
    prompt_mask = torch.ones(n, tp, dtype=torch.long)
    prompt_mask[:, :3] = 0
    prompt_ids = torch.randint(2, VOCAB, (n, tp), generator=torch.Generator().manual_seed(0)).masked_fill(prompt_mask == 0, PAD)
    seqs = Sequences(prompt_ids, prompt_mask, torch.full((n, length), 4), torch.arange(n), n)
    out = mean_field_logprobs(rec, seqs, MASK, (0, "mf", 3), p_mask_prompt=0.15)
    assert out.shape == (n, length)
    (ids, attn), = rec.inputs
    assert bool((ids[:, tp:] == MASK).all())  # completion fully masked
    assert torch.equal(attn[:, :tp], prompt_mask)
    assert bool((ids[:, :3] == PAD).all())  # padding never masked
    masked = ids[:, 3:tp] == MASK
    assert abs(masked.float().mean().item() - 0.15) < 0.03
    assert torch.equal(ids[:, 3:tp][~masked], prompt_ids[:, 3:][~masked])  # the rest is untouched
    # same key -> same prompt mask (shared by theta / old / ref); another key -> another mask
    rec2 = Recorder(make_toy_logits(4))
    mean_field_logprobs(rec2, seqs, MASK, (0, "mf", 3), p_mask_prompt=0.15)
    assert torch.equal(rec2.inputs[0][0], ids)
    rec3 = Recorder(make_toy_logits(3))
    mean_field_logprobs(rec3, seqs, MASK, (0, "mf", 4), p_mask_prompt=0.15)
    assert not torch.equal(rec3.inputs[0][0], ids)
    # and the returned values are log p of the completion given exactly that input
    logits = make_toy_logits(3)(ids, attn)[:, tp:]
    want = torch.log_softmax(logits, -1).gather(-1, seqs.completion_ids[..., None]).squeeze(-1)
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.equal(ids[:, :tp] == MASK, prompt_masks((0, "mf", 3), torch.arange(n), prompt_mask, 0.15))


def test_mean_field_with_zero_prompt_masking_leaves_the_prompt_alone():
    rec = Recorder(make_toy_logits(3))
    seqs = padded_batch(4)
    mean_field_logprobs(rec, seqs, MASK, (0, "mf"), p_mask_prompt=0.0)
    ids, _ = rec.inputs[0]
    assert torch.equal(ids[:, :4], seqs.prompt_ids)
    assert bool((ids[:, 4:] == MASK).all())


# -- proxy dispatch ----------------------------------------------------------------------------------

from dllm_rl.diffusion.likelihood import (  # noqa: E402
    denoising_step_logprobs, eubo_mean, likelihood_terms, masked_logprobs, masked_mean_logprob, step_inputs)
from dllm_rl.diffusion.sampler import SamplerConfig, generate, left_pad  # noqa: E402


def test_likelihood_terms_select_the_estimator():
    fn, seqs, key = make_toy_logits(3), padded_batch(), (0, "x", 1, 0)
    assert torch.equal(likelihood_terms("elbo", fn, seqs, MASK, key, num_samples=3, coupled=False),
                       elbo_terms(fn, seqs, MASK, key, num_samples=3, coupled=False))
    assert torch.equal(likelihood_terms("mean_field", fn, seqs, MASK, key, p_mask_prompt=0.3),
                       mean_field_logprobs(fn, seqs, MASK, key, p_mask_prompt=0.3))
    with pytest.raises(ValueError, match="mean_field, elbo"):
        likelihood_terms("exact", fn, seqs, MASK, key)


def test_masked_logprobs_score_each_masked_copy():
    fn, seqs = make_toy_logits(2), padded_batch(3)
    masked = torch.zeros(3, 2, 5, dtype=torch.bool)
    masked[:, 0, :2] = True
    masked[:, 1, 3:] = True
    got = masked_logprobs(fn, seqs, masked, MASK)
    for p in range(2):
        completion_in = seqs.completion_ids.masked_fill(masked[:, p], MASK)
        assert torch.allclose(got[:, p], token_logprobs(fn, seqs, completion_in), atol=1e-6)


# -- SPG bounds ------------------------------------------------------------------------------------

def test_masked_mean_logprob_by_hand():
    logp = torch.tensor([[[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]]])
    masked = torch.tensor([[[True, True, True], [False, True, True]]])
    valid = torch.tensor([[True, True, False]])
    # draw 1: masked valid {0, 1} -> -1.5; draw 2: {1} -> -5
    assert float(masked_mean_logprob(logp, masked, valid)) == pytest.approx((-1.5 - 5.0) / 2)


def test_eubo_mean_by_hand():
    p = torch.tensor([[[0.5, 0.2, 0.9], [0.4, 0.1, 0.3]]])
    masked = torch.tensor([[[True, False, True], [True, True, True]]])
    valid = torch.tensor([[True, True, True]])
    beta = 2.0
    # t: draw 1 masks 2 of 3 valid tokens, draw 2 all 3
    t1, t2 = 2 / 3, 1.0
    tok0 = math.log((0.5 ** 2 / t1 + 0.4 ** 2 / t2) / 2) / beta
    tok1 = math.log((0.1 ** 2 / t2) / 2) / beta
    tok2 = math.log((0.9 ** 2 / t1 + 0.3 ** 2 / t2) / 2) / beta
    assert float(eubo_mean(p.log(), masked, valid, beta)) == pytest.approx((tok0 + tok1 + tok2) / 3, abs=1e-6)


def test_eubo_ignores_unmasked_and_padding_tokens_and_has_finite_gradients():
    logp = torch.tensor([[[-1.0, -2.0, -50.0]]], requires_grad=True)
    masked = torch.tensor([[[True, False, True]]])
    valid = torch.tensor([[True, True, False]])  # token 2 is padding; token 1 is never masked
    out = eubo_mean(logp, masked, valid, 1.5)
    # one valid token masked out of two: t = 1/2; (1/1.5) log(e^{-1.5} / 0.5) = -1 + log(2)/1.5
    assert out.item() == pytest.approx(-1.0 + math.log(2) / 1.5, abs=1e-6)
    out.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_one_draw_eubo_is_the_masked_mean_plus_the_mask_rate_correction():
    """With a single draw, EUBO = mean_{k in S} (1/beta) log(p_k^beta / t) = l+ - log(t) / beta >= l+:
    the sandwich's upper side sits above its lower side by exactly the rate correction."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 1, 6, generator=g) * 3
    masked = torch.rand(5, 1, 6, generator=g) < 0.5
    masked[:, :, 0] = True
    valid = torch.ones(5, 6, dtype=torch.bool)
    t = masked[:, 0].float().mean(-1)
    lower = masked_mean_logprob(logp, masked, valid)
    assert torch.allclose(eubo_mean(logp, masked, valid, 1.5), lower - t.log() / 1.5, atol=1e-6)
    assert bool((t < 1).any())  # some rows really get a positive correction


# -- AGRPO: the sampler's steps, revisited -----------------------------------------------------------

def test_step_inputs_rebuild_the_state_before_each_step():
    completion = torch.tensor([[5, 6, 7, 8]])
    commit = torch.tensor([[2, 0, 1, 2]])
    states = step_inputs(completion, commit, torch.tensor([[0, 1, 2, 3]]), MASK)
    assert states[0].tolist() == [[MASK] * 4, [MASK, 6, MASK, MASK], [MASK, 6, 7, MASK], [5, 6, 7, 8]]


@pytest.mark.parametrize("remasking, top_k, top_p", [("random", None, None), ("low_confidence", 3, None), ("random", None, 0.8)])
def test_step_logprobs_reproduce_what_the_sampler_recorded(remasking, top_k, top_p):
    """Rebuilding every denoising state from the commit steps and re-scoring it gives exactly the
    log-probs the sampler recorded for the tokens it committed there (semi-AR blocks, padded prompts)."""
    fn = make_toy_logits(4, scale=0.9)
    prompts = [[3, 4, 5], [6], [2, 3, 4, 5, 6], [4, 4]]
    cfg = SamplerConfig(gen_length=6, steps=4, block_length=3, temperature=0.7, remasking=remasking, top_k=top_k, top_p=top_p)
    out = generate(fn, prompts, MASK, PAD, cfg, [torch.Generator().manual_seed(i) for i in range(4)])
    prompt_ids, prompt_mask = left_pad(prompts, PAD)
    seqs = Sequences(prompt_ids, prompt_mask, out.completions, torch.arange(4), 4)
    steps = torch.arange(out.nfe).expand(4, out.nfe)
    logp = denoising_step_logprobs(fn, seqs, out.commit_step, steps, MASK, 0.7, top_k, top_p)
    at_commit = logp.gather(1, out.commit_step[:, None, :]).squeeze(1)
    assert torch.allclose(at_commit, out.logprobs, atol=1e-5)
    assert bool((out.logprobs < 0).any())  # the check is not vacuous: tokens had real choices

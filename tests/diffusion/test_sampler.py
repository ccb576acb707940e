"""Masked-diffusion sampler: padded batches equal rows sampled alone (greedy and stochastic, both
remasking modes, semi-autoregressive blocks), the commit schedule, NFE, and the sampling distribution."""
import math

import pytest
import torch

from dllm_rl.diffusion.sampler import SamplerConfig, generate, left_pad
from dllm_rl.models.adapter import prompt_cache_fns
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig



PAD, MASK = 0, 1


@pytest.fixture(scope="module")
def model():
    m = TinyDLM(TinyDLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).eval()
    m.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # sharper logits than the 0.02-std init, so confidences are well separated
        m.lm_head.weight.mul_(30)
    return m


@pytest.fixture(scope="module")
def logits_fn(model):
    def fn(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return fn


PROMPTS = [[10, 11, 12], [20, 21, 22, 23, 24, 25], [30], [40, 41, 42, 43]]


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def run_alone(fn, cfg, seeds=None):
    outs = []
    for i, p in enumerate(PROMPTS):
        g = None if seeds is None else gens([seeds[i]])
        outs.append(generate(fn, [p], MASK, PAD, cfg, g))
    return outs


def assert_batch_equals_alone(batch, alone, check_logprobs=True):
    for i, out in enumerate(alone):
        assert torch.equal(batch.completions[i], out.completions[0]), i
        assert torch.equal(batch.commit_step[i], out.commit_step[0]), i
        if check_logprobs:
            assert torch.allclose(batch.logprobs[i], out.logprobs[0], atol=1e-4), i


def test_left_pad():
    ids, mask = left_pad([[5, 6], [7], []], PAD)
    assert ids.tolist() == [[5, 6], [PAD, 7], [PAD, PAD]]
    assert mask.tolist() == [[1, 1], [0, 1], [0, 0]]


@pytest.mark.parametrize("block_length", [3, 12])
def test_greedy_low_confidence_batch_equals_rows_alone(logits_fn, block_length):
    cfg = SamplerConfig(gen_length=12, steps=6, block_length=block_length, temperature=0.0)
    batch = generate(logits_fn, PROMPTS, MASK, PAD, cfg)
    assert batch.completions.shape == (4, 12)
    assert_batch_equals_alone(batch, run_alone(logits_fn, cfg))
    # the rows are not trivially identical (the prompt matters)
    assert len({tuple(r) for r in batch.completions.tolist()}) > 1


def test_greedy_random_remasking_batch_equals_rows_alone(logits_fn):
    cfg = SamplerConfig(gen_length=12, steps=6, block_length=4, temperature=0.0, remasking="random")
    seeds = [3, 4, 5, 6]
    batch = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens(seeds))
    assert_batch_equals_alone(batch, run_alone(logits_fn, cfg, seeds))


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_temperature_sampling_batch_equals_rows_alone(logits_fn, remasking):
    cfg = SamplerConfig(gen_length=12, steps=6, block_length=4, temperature=1.0, remasking=remasking)
    seeds = [11, 12, 13, 14]
    batch = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens(seeds))
    assert_batch_equals_alone(batch, run_alone(logits_fn, cfg, seeds))
    # per-row generators: a row's output depends on its own seed only
    other = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens([11, 99, 13, 14]))
    assert torch.equal(other.completions[[0, 2, 3]], batch.completions[[0, 2, 3]])
    assert not torch.equal(other.completions[1], batch.completions[1])


def test_stochastic_sampling_is_reproducible_and_ignores_the_global_rng(logits_fn):
    cfg = SamplerConfig(gen_length=8, steps=4, block_length=8, temperature=1.0, remasking="random")
    torch.manual_seed(0)
    a = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens([1, 2, 3, 4]))
    torch.manual_seed(1)
    b = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens([1, 2, 3, 4]))
    assert torch.equal(a.completions, b.completions) and torch.equal(a.commit_step, b.commit_step)


def _check_schedule(out, cfg):
    """Every position committed exactly once, in its block's turn, with the expected counts."""
    length = cfg.gen_length
    commit = out.commit_step
    assert bool((commit >= 0).all()) and bool((commit < out.nfe).all())
    blocks = [(s, min(s + cfg.block_length, length)) for s in range(0, length, cfg.block_length)]
    for row in commit:
        for (s0, e0), (s1, e1) in zip(blocks, blocks[1:]):
            assert int(row[s0:e0].max()) < int(row[s1:e1].min())  # semi-autoregressive order
    return commit


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_commit_schedule_even_split(logits_fn, remasking):
    cfg = SamplerConfig(gen_length=12, steps=6, block_length=4, temperature=0.0, remasking=remasking)
    out = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens([0, 1, 2, 3]))
    assert out.nfe == 6
    commit = _check_schedule(out, cfg)
    for row in commit:  # 3 blocks x 2 steps, 2 tokens per step
        assert torch.bincount(row, minlength=6).tolist() == [2] * 6


def test_commit_schedule_uneven_split(logits_fn):
    # blocks (0,3), (3,6), (6,7) share 5 steps as 2, 2, 1; within a block the tokens are spread 2, 1
    cfg = SamplerConfig(gen_length=7, steps=5, block_length=3)
    out = generate(logits_fn, PROMPTS, MASK, PAD, cfg)
    assert out.nfe == 5 == cfg.num_steps
    commit = _check_schedule(out, cfg)
    for row in commit:
        assert torch.bincount(row, minlength=5).tolist() == [2, 1, 2, 1, 1]


def test_default_steps_are_two_tokens_per_step():
    assert SamplerConfig(gen_length=10).num_steps == 5
    assert SamplerConfig(gen_length=1).num_steps == 1
    with pytest.raises(ValueError, match="remasking"):
        SamplerConfig(remasking="confidence")


def test_nfe_equals_steps_in_one_block(logits_fn):
    calls = []

    def counting(ids, attn):
        calls.append(ids.shape)
        return logits_fn(ids, attn)

    cfg = SamplerConfig(gen_length=8, steps=8, block_length=8)
    out = generate(counting, PROMPTS, MASK, PAD, cfg)
    assert out.nfe == 8 == len(calls)
    _check_schedule(out, cfg)
    for row in out.commit_step:
        assert sorted(row.tolist()) == list(range(8))  # one token per step


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_token_is_never_output(logits_fn, temperature):
    def loves_mask(ids, attn):
        logits = logits_fn(ids, attn).clone()
        logits[..., MASK] += 50.0  # the model's favourite token is the mask itself
        return logits

    cfg = SamplerConfig(gen_length=8, steps=4, block_length=4, temperature=temperature)
    out = generate(loves_mask, PROMPTS, MASK, PAD, cfg, gens([0, 1, 2, 3]))
    assert not bool((out.completions == MASK).any())
    assert torch.isfinite(out.logprobs).all()


def test_stochastic_sampling_requires_one_generator_per_row(logits_fn):
    with pytest.raises(ValueError, match="generator"):
        generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=4, temperature=0.7))
    with pytest.raises(ValueError, match="generator"):
        generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=4, remasking="random"))
    with pytest.raises(ValueError, match="generator"):
        generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=4, temperature=0.7), gens([0, 1]))


def test_top_k_1_with_temperature_is_greedy(logits_fn):
    # one position per block: the commit order is forced, so only the token choice can differ
    greedy = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=6, steps=6, block_length=1))
    sampled = generate(logits_fn, PROMPTS, MASK, PAD,
                       SamplerConfig(gen_length=6, steps=6, block_length=1, temperature=1.5, top_k=1), gens([5, 6, 7, 8]))
    assert torch.equal(sampled.completions, greedy.completions)
    assert torch.allclose(sampled.logprobs, torch.zeros_like(sampled.logprobs))  # a point mass
    plain = generate(logits_fn, PROMPTS, MASK, PAD,
                     SamplerConfig(gen_length=6, steps=6, block_length=1, temperature=1.5), gens([5, 6, 7, 8]))
    assert not torch.equal(plain.completions, greedy.completions)  # without top_k it does sample


def test_greedy_logprobs_are_the_models_log_softmax(logits_fn):
    """One step, one block: every token is committed at step 0 from the all-mask input."""
    cfg = SamplerConfig(gen_length=5, steps=1, block_length=5)
    out = generate(logits_fn, PROMPTS, MASK, PAD, cfg)
    ids, attn = left_pad(PROMPTS, PAD)
    tp = ids.shape[1]
    x = torch.cat([ids, torch.full((4, 5), MASK)], 1)
    logits = logits_fn(x, torch.cat([attn, torch.ones(4, 5, dtype=torch.long)], 1))[:, tp:].double()
    logits[..., MASK] = -math.inf
    assert torch.equal(out.completions, logits.argmax(-1))
    want = torch.log_softmax(logits, -1).max(-1).values.float()
    assert torch.allclose(out.logprobs, want, atol=1e-5)


# -- the sampling distribution (a context-free toy model, one token, many rows) --------------------

TOY_LOGITS = torch.tensor([0.0, 5.0, 1.0, 0.5, -0.5, 2.0])  # index 1 is the mask token


def toy_fn(ids, attn):
    return TOY_LOGITS.expand(ids.shape[0], ids.shape[1], -1).clone()


def _frequencies(cfg, n=3000):
    out = generate(toy_fn, [[3]] * n, MASK, PAD, cfg, gens(range(n)))
    return torch.bincount(out.completions[:, 0], minlength=6).double() / n, out


def test_temperature_sampling_follows_the_tempered_softmax():
    cfg = SamplerConfig(gen_length=1, steps=1, block_length=1, temperature=2.0)
    freq, out = _frequencies(cfg)
    logits = TOY_LOGITS.double().clone()
    logits[MASK] = -math.inf
    probs = torch.softmax(logits / 2.0, -1)
    assert freq[MASK] == 0
    assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / 3000).sqrt() + 1e-9), (freq, probs)
    # the recorded log-prob is that of the sampling distribution
    assert torch.allclose(out.logprobs[:, 0].double(), probs.log()[out.completions[:, 0]], atol=1e-5)


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    # probabilities without the mask token: 5.0 -> excluded; tokens 5 (2.0), 2 (1.0), 3 (0.5), 0, 4
    logits = TOY_LOGITS.double().clone()
    logits[MASK] = -math.inf
    probs = torch.softmax(logits, -1)
    order = probs.argsort(descending=True)
    top2 = float(probs[order[:2]].sum())  # p(5) + p(2), under 0.8 for these logits
    assert float(probs[order[0]]) < top2 < 0.8 < float(probs[order[:3]].sum())
    cfg = SamplerConfig(gen_length=1, steps=1, block_length=1, temperature=1.0, top_p=0.8)
    freq, out = _frequencies(cfg)
    kept = order[:3]
    assert float(freq[kept].sum()) == 1.0
    renorm = probs[kept] / probs[kept].sum()
    assert torch.all((freq[kept] - renorm).abs() < 4 * (renorm * (1 - renorm) / 3000).sqrt()), (freq, renorm)
    assert torch.allclose(out.logprobs[:, 0].double().exp().unique().sort().values, renorm.sort().values, atol=1e-5)


def test_low_confidence_remasking_commits_the_most_confident_positions_first():
    """Position k of the completion predicts token 3 with a confidence that grows with k, whatever
    the input: one token per step must then be committed from the last position to the first."""
    gen_length = 5

    def fn(ids, attn):
        logits = torch.zeros(ids.shape[0], ids.shape[1], 6)
        tp = ids.shape[1] - gen_length
        logits[:, tp:, 3] = 1.0 + torch.arange(gen_length, dtype=torch.float32)
        return logits

    out = generate(fn, [[4, 5], [5]], MASK, PAD, SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length))
    assert out.commit_step.tolist() == [[4, 3, 2, 1, 0]] * 2
    assert bool((out.completions == 3).all())
    # two per step, in blocks of 4 + 1: the most confident pair of each block goes first
    out = generate(fn, [[4, 5]], MASK, PAD, SamplerConfig(gen_length=gen_length, steps=3, block_length=4))
    assert out.commit_step.tolist() == [[1, 1, 0, 0, 2]]


def test_top_k_does_not_change_the_low_confidence_order(logits_fn):
    """Filtering the sampling distribution (here top_k=1, i.e. greedy) must not change which
    positions low-confidence remasking commits first: the confidence is the model's, as in LLaDA.
    (With the confidence read from the filtered distribution every position has confidence 1 and
    the order falls back to arbitrary tie-breaking.)"""
    cfg = dict(gen_length=8, steps=4, block_length=4)
    greedy = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**cfg))
    top1 = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**cfg, temperature=0.8, top_k=1), gens([1, 2, 3, 4]))
    assert torch.equal(top1.commit_step, greedy.commit_step)
    assert torch.equal(top1.completions, greedy.completions)


def test_entropy_and_margin_remasking_order_positions_by_their_own_criterion():
    """Three positions whose orders differ by criterion. Position 0: top prob 0.5, rest spread over
    many tokens (highest top prob, but high entropy and a small margin over nothing). Position 1: two
    tokens at 0.45/0.45 (low margin, low entropy). Position 2: 0.48/0.26/0.26 (mid)."""
    probs = torch.full((3, 6), 1e-9)
    probs[0, 3], probs[0, 2], probs[0, 4], probs[0, 5], probs[0, 0] = 0.5, 0.125, 0.125, 0.125, 0.125
    probs[1, 3], probs[1, 4], probs[1, 5] = 0.45, 0.45, 0.10
    probs[2, 3], probs[2, 4], probs[2, 5] = 0.48, 0.26, 0.26
    log = probs.log()
    log[:, MASK] = 0.0  # the mask token is never a candidate (the sampler removes it)

    def fn(ids, attn):
        out = torch.zeros(ids.shape[0], ids.shape[1], 6)
        out[:, -3:] = log
        return out

    def order(remasking):
        cfg = SamplerConfig(gen_length=3, steps=3, block_length=3, remasking=remasking)
        return generate(fn, [[4]], MASK, PAD, cfg).commit_step[0].tolist()

    def entropy(p):
        p = p[p > 1e-6] / p[p > 1e-6].sum()
        return float(-(p * p.log()).sum())

    ents = [entropy(probs[i]) for i in range(3)]
    assert ents[1] < ents[2] < ents[0]
    assert order("entropy") == [2, 0, 1]  # lowest entropy first
    assert order("margin") == [0, 2, 1]  # margins 0.375, 0.0, 0.22
    assert order("low_confidence") == [0, 2, 1]  # top probabilities 0.5, 0.45, 0.48
    with pytest.raises(ValueError, match="remasking"):
        SamplerConfig(remasking="maskgit")


# -- confidence-threshold parallel decoding and early stop ------------------------------------------

def counting(fn):
    calls = []

    def wrapped(ids, attn):
        calls.append(ids.shape[0])
        return fn(ids, attn)
    return wrapped, calls


def assert_same_output(a, b):
    assert torch.equal(a.completions, b.completions)
    assert torch.equal(a.commit_step, b.commit_step)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-6)
    assert a.nfe == b.nfe and torch.equal(a.row_nfe, b.row_nfe)


@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (1.0, "low_confidence"), (0.0, "margin")])
def test_threshold_one_is_one_token_per_step_decoding(logits_fn, temperature, remasking):
    """No confidence exceeds 1, so threshold 1.0 commits exactly the most confident token per step:
    the fixed schedule with steps = gen_length, token for token and step for step."""
    base = dict(gen_length=12, block_length=4, temperature=temperature, remasking=remasking)
    fixed = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base, steps=12), gens([1, 2, 3, 4]))
    thr = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base, threshold=1.0), gens([1, 2, 3, 4]))
    assert_same_output(thr, fixed)
    assert thr.nfe == 12 and thr.row_nfe.tolist() == [12] * 4


def test_threshold_commits_every_position_above_it_and_at_least_one():
    """Context-free p(token 3) = 0.95, 0.3, 0.97, 0.2, 0.6 (token 4 has the rest), so the chosen
    tokens' confidences are 0.95, 0.7, 0.97, 0.8, 0.6: with threshold 0.9 step 0 commits positions 0
    and 2 together, then nothing clears it, so one per step by confidence (3, then 1, then 4)."""
    top = torch.tensor([0.95, 0.3, 0.97, 0.2, 0.6])
    gen_length = 5

    def fn(ids, attn):
        logits = torch.full((ids.shape[0], ids.shape[1], 6), -30.0)
        tp = ids.shape[1] - gen_length
        logits[:, tp:, 3] = (top / (1 - top)).log()  # p(3) = top, p(4) = 1 - top (the rest ~0)
        logits[:, tp:, 4] = 0.0
        return logits

    out = generate(fn, [[4, 5]], MASK, PAD, SamplerConfig(gen_length=5, block_length=5, threshold=0.9))
    assert out.commit_step.tolist() == [[0, 2, 0, 1, 3]]
    assert out.completions.tolist() == [[3, 4, 3, 4, 3]]  # argmax: token 4 where top < 0.5
    assert out.nfe == 4
    # two blocks: the threshold is applied within the current block only
    out = generate(fn, [[4, 5]], MASK, PAD, SamplerConfig(gen_length=5, block_length=2, threshold=0.9))
    assert out.commit_step.tolist() == [[0, 1, 2, 3, 4]]  # block (0,1): 0.95 first; block (2,3): 0.97; block (4)


def test_threshold_nfe_is_far_below_half_the_length_on_a_confident_model():
    gen_length = 32

    def confident(ids, attn):  # every position predicts token 3 with probability ~1
        logits = torch.zeros(ids.shape[0], ids.shape[1], 6)
        logits[..., 3] = 20.0
        return logits

    fn, calls = counting(confident)
    out = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=gen_length, block_length=8, threshold=0.9))
    assert out.nfe == 4 == len(calls) < gen_length // 2  # one pass per block
    assert bool((out.completions == 3).all())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_threshold_padded_batch_equals_rows_alone_and_counts_true_forward_passes(logits_fn, temperature):
    cfg = SamplerConfig(gen_length=16, block_length=8, temperature=temperature, threshold=0.35)
    seeds = [21, 22, 23, 24]
    fn, calls = counting(logits_fn)
    batch = generate(fn, PROMPTS, MASK, PAD, cfg, gens(seeds))
    alone = run_alone(logits_fn, cfg, seeds)
    assert_batch_equals_alone(batch, alone)
    assert batch.row_nfe.tolist() == [o.nfe for o in alone]
    assert len(set(batch.row_nfe.tolist())) > 1  # rows finish at different steps ...
    assert len(calls) == batch.nfe == int(batch.row_nfe.max())  # ... and leave the batch when done
    assert sum(calls) == int(batch.row_nfe.sum())
    assert bool((batch.commit_step >= 0).all()) and bool((batch.completions != MASK).all())
    for row, n in zip(batch.commit_step, batch.row_nfe):
        assert int(row.max()) == int(n) - 1 and set(row.tolist()) == set(range(int(n)))  # >= 1 token per pass
        assert int(row[:8].max()) < int(row[8:].min())  # blocks in order


@pytest.mark.parametrize("steps,block_length", [(4, 12), (5, 4), (6, 4), (7, 12)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_threshold_one_with_a_step_budget_is_the_fixed_schedule(logits_fn, steps, block_length, temperature):
    """With a budget the fixed schedule is the floor and threshold 1.0 adds nothing above it, so the
    output is the fixed ``steps``-step schedule's, token for token and step for step (blocks included)."""
    base = dict(gen_length=12, block_length=block_length, temperature=temperature, steps=steps)
    fixed = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base), gens([5, 6, 7, 8]))
    thr = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base, threshold=1.0), gens([5, 6, 7, 8]))
    assert_same_output(thr, fixed)
    assert thr.row_nfe.tolist() == [steps] * 4


@pytest.mark.parametrize("threshold", [0.35, 0.6, 0.9])
def test_threshold_step_budget_caps_each_rows_passes_and_keeps_batch_equal_to_rows_alone(logits_fn, threshold):
    """A budget never lets a row take more passes than it (in every block), never fewer than the
    uncapped threshold's commits per step, and a padded batch still equals each row alone."""
    seeds = [31, 32, 33, 34]
    capped = SamplerConfig(gen_length=16, block_length=8, temperature=1.0, threshold=threshold, steps=4)
    free = SamplerConfig(gen_length=16, block_length=8, temperature=1.0, threshold=threshold)
    batch = generate(logits_fn, PROMPTS, MASK, PAD, capped, gens(seeds))
    assert_batch_equals_alone(batch, run_alone(logits_fn, capped, seeds))
    uncapped = generate(logits_fn, PROMPTS, MASK, PAD, free, gens(seeds))
    assert bool((batch.row_nfe <= 4).all()) and bool((batch.row_nfe <= uncapped.row_nfe).all())
    for row in batch.commit_step:  # two steps per block of 8: blocks (0-7) and (8-15)
        assert int(row[:8].max()) <= 1 and int(row[8:].max()) <= int(row[8:].min()) + 1
    assert bool((batch.completions != MASK).all())
    if threshold == 0.9:  # the cap binds: uncapped rows of this sharp random model need more passes
        assert bool((uncapped.row_nfe > 4).any())


def test_threshold_step_budget_floor_by_hand():
    """Confidences 0.95, 0.7, 0.97, 0.8, 0.6, threshold 0.9, budget 2 steps: step 0 commits the two above
    the threshold and ceil(5 / 2) = 3 at least, so also 0.8; step 1 commits the remaining two."""
    top = torch.tensor([0.95, 0.3, 0.97, 0.2, 0.6])

    def fn(ids, attn):
        logits = torch.full((ids.shape[0], ids.shape[1], 6), -30.0)
        tp = ids.shape[1] - 5
        logits[:, tp:, 3] = (top / (1 - top)).log()
        logits[:, tp:, 4] = 0.0
        return logits

    out = generate(fn, [[4, 5]], MASK, PAD, SamplerConfig(gen_length=5, block_length=5, threshold=0.9, steps=2))
    assert out.commit_step.tolist() == [[0, 1, 0, 0, 1]] and out.nfe == 2
    out = generate(fn, [[4, 5]], MASK, PAD, SamplerConfig(gen_length=5, block_length=5, threshold=0.9, steps=3))
    # step 0: the two above 0.9 (>= ceil 5/3 = 2); step 1: ceil(3/2) = 2, so 0.8 and 0.7; step 2: 0.6
    assert out.commit_step.tolist() == [[0, 1, 0, 1, 2]] and out.nfe == 3


def _tiny(num_layers, seed=0):
    m = TinyDLM(TinyDLMConfig(hidden_size=32, num_layers=num_layers, num_heads=2, intermediate_size=64)).eval()
    m.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        m.lm_head.weight.mul_(30)
    fn = lambda ids, attn: m(input_ids=ids, attention_mask=attn).logits  # noqa: E731
    return m, fn, prompt_cache_fns(m)


@pytest.mark.parametrize("threshold", [None, 0.5])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompt_cache_is_exact_for_a_one_layer_model(temperature, threshold):
    """With one layer the prompt's keys and values depend on the prompt tokens only, so caching them
    changes nothing: same tokens, steps and log-probs as full passes (padded batch, blocks)."""
    _, fn, fns = _tiny(1)
    base = dict(gen_length=12, block_length=4, temperature=temperature, threshold=threshold)
    full = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base), gens([1, 2, 3, 4]))
    cached = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base, prompt_cache=True), gens([1, 2, 3, 4]), fns)
    assert_same_output(cached, full)


def test_prompt_cache_passes_cover_the_completion_only_and_keep_rows_independent():
    """Deeper models: later passes see only the completion positions (the prompt comes from the cache),
    the result is a real approximation (differs from full passes somewhere), and a padded batch still
    equals each row alone."""
    m, fn, (prefill, after) = _tiny(2)
    widths = []
    model_after = m.forward_after_prompt

    def counted_after(ids, attn, cache):
        widths.append((ids.shape[1], attn.shape[1], cache[0][0].shape[2]))
        return model_after(ids, attn, cache)

    cfg = SamplerConfig(gen_length=12, block_length=4, temperature=1.0, threshold=0.5, prompt_cache=True)
    seeds = [11, 12, 13, 14]
    m.forward_after_prompt = counted_after  # what the model itself runs over in a cached pass
    batch = generate(fn, PROMPTS, MASK, PAD, cfg, gens(seeds), (prefill, after))
    del m.forward_after_prompt
    width = max(map(len, PROMPTS))
    assert widths and all(w == (12, width + 12, width) for w in widths)
    for i, p in enumerate(PROMPTS):
        alone = generate(fn, [p], MASK, PAD, cfg, gens([seeds[i]]), (prefill, after))
        assert torch.equal(batch.completions[i], alone.completions[0]) and torch.equal(batch.commit_step[i], alone.commit_step[0])
    differs = False
    for seed in range(6):  # greedy, full passes vs cached: some prompt must decode differently
        _, fn_s, fns_s = _tiny(2, seed)
        plain = SamplerConfig(gen_length=12, block_length=12, steps=12)
        a = generate(fn_s, PROMPTS, MASK, PAD, plain)
        b = generate(fn_s, PROMPTS, MASK, PAD, SamplerConfig(gen_length=12, block_length=12, steps=12, prompt_cache=True), None, fns_s)
        differs |= not torch.equal(a.completions, b.completions)
    assert differs


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_prompt_cache_refreshed_every_pass_equals_full_passes_and_every_k_passes_runs_k_full_ones(threshold):
    """Refresh 1 = a full pass every time: identical to no cache on a deep model. Refresh 3: passes 0, 3,
    6, ... are full (prefill) passes and the rest run over the completion only."""
    _, fn, (prefill, after) = _tiny(3)
    kinds = []

    def p(ids, attn, n):
        kinds.append("full")
        return prefill(ids, attn, n)

    def a(ids, attn, cache):
        kinds.append("tail")
        return after(ids, attn, cache)

    base = dict(gen_length=12, block_length=4, temperature=1.0, threshold=threshold)
    full = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base), gens([1, 2, 3, 4]))
    every = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base, prompt_cache=True, prompt_cache_refresh=1),
                     gens([1, 2, 3, 4]), (p, a))
    assert_same_output(every, full)
    assert set(kinds) == {"full"}
    kinds.clear()
    out = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base, prompt_cache=True, prompt_cache_refresh=3),
                   gens([1, 2, 3, 4]), (p, a))
    assert kinds == ["full" if t % 3 == 0 else "tail" for t in range(out.nfe)]


def test_prompt_cache_needs_cache_functions(logits_fn):
    with pytest.raises(ValueError, match="prompt_cache"):
        generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(gen_length=8, prompt_cache=True))


def test_threshold_validation():
    with pytest.raises(ValueError, match="threshold"):
        SamplerConfig(threshold=0.9, remasking="entropy")
    with pytest.raises(ValueError, match="threshold"):
        SamplerConfig(threshold=1.5)


EOS = 2


def eos_after(fn, first_eos_position):
    """The model ``fn`` made to emit EOS (with near certainty) at completion positions >= p."""
    def wrapped(ids, attn):
        logits = fn(ids, attn).clone()
        logits[:, ids.shape[1] - 12 + first_eos_position:, EOS] += 60.0
        return logits
    return wrapped


@pytest.mark.parametrize("threshold,temperature", [(None, 0.0), (None, 1.0), (0.6, 0.0)])
def test_early_stop_equals_full_decoding_on_a_model_that_emits_eos_after_a_point(logits_fn, threshold, temperature):
    """EOS from position 5 on, blocks of 4: rows stop once block (4, 8) is committed, skipping block
    (8, 12). The completions equal full decoding; only the forward passes of the skipped block go."""
    fn = eos_after(logits_fn, 5)
    base = dict(gen_length=12, steps=6, block_length=4, temperature=temperature, threshold=threshold)
    seeds = [5, 6, 7, 8]
    full = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**base), gens(seeds))
    counted, calls = counting(fn)
    early = generate(counted, PROMPTS, MASK, PAD, SamplerConfig(**base, eos_id=EOS), gens(seeds))
    assert bool((full.completions[:, 5:] == EOS).all()) and not bool((full.completions[:, :5] == EOS).any())
    assert torch.equal(early.completions, full.completions)
    assert torch.allclose(early.logprobs, full.logprobs, atol=1e-6)  # forced EOS has log-prob ~0 in full decoding
    assert torch.equal(early.commit_step[:, :8], full.commit_step[:, :8])
    assert torch.equal(early.commit_step[:, 8:], early.row_nfe[:, None].expand(4, 4))  # filled after the last pass
    if threshold is None:
        assert early.row_nfe.tolist() == [4] * 4 and full.nfe == 6  # 2 of 3 blocks' steps
    else:
        assert bool((early.row_nfe < full.row_nfe).all())
    assert len(calls) == early.nfe and sum(calls) == int(early.row_nfe.sum())
    # a padded batch still equals each row alone
    assert_batch_equals_alone(early, [generate(fn, [p], MASK, PAD, SamplerConfig(**base, eos_id=EOS), gens([s]))
                                      for p, s in zip(PROMPTS, seeds)])


def test_early_stop_waits_for_the_eos_block_to_finish_and_changes_nothing_without_eos(logits_fn):
    # EOS only in the last block: nothing to skip, output identical to full decoding
    cfg = dict(gen_length=12, steps=6, block_length=4)
    fn = eos_after(logits_fn, 9)
    full = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**cfg))
    early = generate(fn, PROMPTS, MASK, PAD, SamplerConfig(**cfg, eos_id=EOS))
    assert_same_output(early, full)
    # a committed EOS in a block whose other positions are still masked does not stop the row: a
    # model that puts EOS at position 4 only, and token 3 after it, must still decode blocks 2 and 3
    def eos_in_middle(ids, attn):
        logits = torch.zeros(ids.shape[0], ids.shape[1], 6)
        tp = ids.shape[1] - 12
        logits[:, tp:, 3] = 5.0
        logits[:, tp + 4, EOS] = 10.0
        return logits
    out = generate(eos_in_middle, [[4]], MASK, PAD, SamplerConfig(**cfg, eos_id=EOS))
    assert out.completions.tolist() == [[3] * 4 + [EOS] + [3] * 3 + [EOS] * 4]  # stops after block 2
    assert out.nfe == 4


# -- real-scale bookkeeping: batches of rows, logits of the current block only --------------------

@pytest.mark.parametrize("threshold", [None, 0.6])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_rollout_batch_size_does_not_change_completions(logits_fn, threshold, batch_size):
    base = dict(gen_length=12, steps=6, block_length=4, temperature=1.0, threshold=threshold)
    whole = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base), gens([1, 2, 3, 4]))
    split = generate(logits_fn, PROMPTS, MASK, PAD, SamplerConfig(**base, batch_size=batch_size), gens([1, 2, 3, 4]))
    assert torch.equal(whole.completions, split.completions) and torch.equal(whole.commit_step, split.commit_step)
    assert torch.allclose(whole.logprobs, split.logprobs, atol=1e-5) and torch.equal(whole.row_nfe, split.row_nfe)
    with pytest.raises(ValueError, match="batch_size"):
        SamplerConfig(batch_size=0)


@pytest.mark.parametrize("threshold", [None, 0.6])
def test_the_model_is_asked_for_the_current_block_only(model, logits_fn, threshold):
    """A logits function that takes ``logits_to_keep`` gets the positions of the block(s) the active
    rows are decoding, and the completions equal those from full logits."""
    asked = []

    def keeping(ids, attn, logits_to_keep=0):
        asked.append((ids.shape[1], logits_to_keep))
        return model(input_ids=ids, attention_mask=attn, logits_to_keep=logits_to_keep).logits

    cfg = SamplerConfig(gen_length=12, steps=6, block_length=4, temperature=1.0, threshold=threshold)
    kept = generate(keeping, PROMPTS, MASK, PAD, cfg, gens([1, 2, 3, 4]))
    full = generate(logits_fn, PROMPTS, MASK, PAD, cfg, gens([1, 2, 3, 4]))
    assert torch.equal(kept.completions, full.completions) and torch.equal(kept.commit_step, full.commit_step)
    tp = max(map(len, PROMPTS))
    for width, keep in asked:
        assert isinstance(keep, slice) and width == tp + 12
        assert (keep.start - tp) % 4 == 0 and keep.stop - keep.start <= (4 if threshold is None else 12)
    if threshold is None:  # the fixed schedule: exactly one block per pass, in order
        assert [k.start - tp for _, k in asked] == [0, 0, 4, 4, 8, 8]

"""One denoising step's proposals: exact inverse-CDF sampling (every token with nonzero float32
probability reachable, at its probability), confidences against a float64 reference, and results
that do not depend on how rows are chunked."""
import math

import pytest
import torch

from dllm_rl.diffusion.proposals import VOCAB_CHUNK, categorical, propose

MASK = 1


def intervals(probs: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """The tokens ``categorical`` can return for ``probs`` [V], in order, and the width of the set of
    uniforms that returns each, found by bisecting every boundary to float64 resolution (the draw is
    monotone in the uniform: an inverse CDF)."""
    tokens = (probs > 0).nonzero().squeeze(1).tolist()
    n = len(tokens) - 1  # boundaries between consecutive tokens
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    nxt = torch.tensor(tokens[1:])
    batch = probs.expand(n, -1).contiguous()
    for _ in range(64):
        mid = (lo + hi) / 2
        up = categorical(batch, mid) >= nxt  # mid already draws the next token (or a later one)
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), hi, torch.ones(1, dtype=torch.float64)])
    return tokens, edges.diff()


@pytest.mark.parametrize("vocab", [7, VOCAB_CHUNK, 3 * VOCAB_CHUNK + 5])
def test_each_token_is_drawn_with_its_probability(vocab):
    """The uniforms that draw token k form one interval whose width is p_k (to float32 rounding of the
    probabilities, and float64's 2^-53 spacing of the uniform), for every token with mass, tiny ones
    included; zero-probability tokens are never drawn."""
    g = torch.Generator().manual_seed(vocab)
    probs = torch.rand(vocab, generator=g) ** 4  # a wide range of magnitudes
    probs[vocab // 2] = 0.0
    probs[vocab // 3] = 1e-12 * float(probs.sum())
    tokens, widths = intervals(probs)
    assert tokens == (probs > 0).nonzero().squeeze(1).tolist()
    want = probs.double()[tokens] / probs.double().sum()
    assert torch.allclose(widths, want, rtol=1e-5, atol=2**-52), (widths / want - 1).abs().max()


def test_tokens_far_below_float32_resolution_are_reachable():
    """A token of probability 1e-12 next to a heavy one in the same vocabulary chunk: the uniforms that
    draw it span 1e-12, far below float32's spacing near 0.5 (6e-8). (float32 Gumbel-max noise is
    capped near 16.6 nats, so a token 27.6 nats below the top could never be drawn.)"""
    probs = torch.zeros(2 * VOCAB_CHUNK)
    probs[10], probs[11], probs[300] = 0.5, 1e-12, 0.5
    tokens, widths = intervals(probs)
    assert tokens == [10, 11, 300]
    assert widths[1].item() == pytest.approx(1e-12, rel=1e-6)


def test_uniform_at_the_top_of_the_range_stays_on_a_token_with_mass():
    probs = torch.zeros(3 * VOCAB_CHUNK)
    probs[5], probs[VOCAB_CHUNK + 1] = 0.25, 0.75  # every later chunk is empty
    u = torch.tensor([1.0 - 2**-53, 0.0], dtype=torch.float64)
    assert categorical(probs.expand(2, -1).contiguous(), u).tolist() == [VOCAB_CHUNK + 1, 5]


def test_draws_follow_the_tempered_softmax_at_a_large_vocabulary():
    vocab, n, temperature = 5000, 4000, 0.7
    g = torch.Generator().manual_seed(0)
    raw = torch.full((vocab,), -30.0)
    raw[:6] = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])
    raw[MASK] = 10.0  # the mask token is never proposed, however likely
    u = torch.rand(n, 1, generator=g, dtype=torch.float64)
    chosen, logp, _ = propose(raw.expand(n, 1, vocab).to(torch.bfloat16), temperature, None, None, "low_confidence", MASK, u)
    ref = raw.to(torch.bfloat16).double().clone()
    ref[MASK] = -math.inf
    probs = torch.softmax(ref / temperature, -1)
    freq = torch.bincount(chosen.flatten(), minlength=vocab).double() / n
    assert freq[MASK] == 0
    assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / n).sqrt() + 1e-9)
    assert torch.allclose(logp.flatten().double(), probs.log()[chosen.flatten()], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("remasking", ["low_confidence", "entropy", "margin"])
def test_confidences_and_logprobs_match_a_float64_reference(temperature, remasking):
    g = torch.Generator().manual_seed(1)
    raw = (torch.randn(3, 5, 300, generator=g) * 4).to(torch.bfloat16)
    u = torch.rand(3, 5, generator=g, dtype=torch.float64)
    chosen, logp, conf = propose(raw, temperature, None, None, remasking, MASK, u if temperature > 0 else None)
    ref = raw.double().clone()
    ref[..., MASK] = -math.inf
    logits = ref / temperature if temperature > 0 else ref
    if temperature == 0:
        assert torch.equal(chosen, logits.argmax(-1))  # greedy: the exact argmax, as in float64
    assert not bool((chosen == MASK).any())
    lsm = torch.log_softmax(logits, -1)
    assert torch.allclose(logp.double(), lsm.gather(-1, chosen[..., None]).squeeze(-1), atol=1e-5)
    if remasking == "low_confidence":  # the model's own probability, untempered
        want = torch.softmax(ref, -1).gather(-1, chosen[..., None]).squeeze(-1)
    elif remasking == "entropy":
        want = -torch.special.entr(lsm.exp()).sum(-1)
    else:
        top2 = lsm.exp().topk(2, dim=-1).values
        want = top2[..., 0] - top2[..., 1]
    assert torch.allclose(conf.double(), want, atol=1e-5)


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.8)])
def test_filtered_sampling_draws_inside_the_filter_and_keeps_the_unfiltered_confidence(top_k, top_p):
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(64, 4, 50, generator=g) * 2
    u = torch.rand(64, 4, generator=g, dtype=torch.float64)
    chosen, logp, conf = propose(raw, 1.3, top_k, top_p, "low_confidence", MASK, u)
    ref = raw.double().clone()
    ref[..., MASK] = -math.inf
    order = (ref / 1.3).softmax(-1).argsort(-1, descending=True)
    if top_k is not None:
        allowed = order[..., :top_k]
    else:
        sorted_p = (ref / 1.3).softmax(-1).gather(-1, order)
        keep = (sorted_p.cumsum(-1) - sorted_p) <= top_p
        allowed = torch.where(keep, order, order[..., :1])
    assert bool((allowed == chosen[..., None]).any(-1).all())
    assert torch.allclose(conf.double(), ref.softmax(-1).gather(-1, chosen[..., None]).squeeze(-1), atol=1e-6)


def test_results_do_not_depend_on_the_chunking_of_rows():
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(4, 8, 1000, generator=g).to(torch.bfloat16)
    u = torch.rand(4, 8, generator=g, dtype=torch.float64)
    whole = propose(raw, 0.9, None, None, "entropy", MASK, u, work_bytes=2**30)
    for work in (4 * 1000, 4 * 1000 * 3, 4 * 1000 * 7):  # 1, 3 and 7 rows per chunk
        for a, b in zip(whole, propose(raw, 0.9, None, None, "entropy", MASK, u, work_bytes=work)):
            assert torch.equal(a, b)

"""Prompt caching on the native LLaDA and Dream models: a cached pass over the completion equals a
full pass where the cache is not stale (one layer, or an unchanged sequence), differs where it is,
keeps Dream's one-position shift right, and refreshed every pass the sampler's output is the
uncached output token for token."""
import pytest
import torch

from dllm_rl.diffusion.sampler import SamplerConfig, generate
from dllm_rl.models.adapter import ModelAdapter, prompt_cache_fns

from .conftest import MASK, family_tokenizer, tiny_model

FAMILIES = ("llada", "dream")
PROMPTS = [[30, 31, 32, 33, 34, 35, 36], [40, 41], [50, 51, 52, 53]]


def adapter(family: str, layers: int, seed: int = 0) -> ModelAdapter:
    tok = family_tokenizer(family)
    model = tiny_model(family, tok, seed=seed, **({"n_layers": layers} if family == "llada" else {"num_hidden_layers": layers}))
    return ModelAdapter(model=model, tokenizer=tok, mask_id=tok.convert_tokens_to_ids(MASK[family]), eos_id=tok.eos_token_id,
                        pad_id=tok.pad_token_id, shift_logits=family == "dream", name=family)


def padded_batch(a: ModelAdapter, length: int):
    width = max(map(len, PROMPTS))
    ids = torch.full((len(PROMPTS), width + length), a.mask_id)
    mask = torch.ones_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, :width - len(p)] = a.pad_id
        mask[i, :width - len(p)] = 0
        ids[i, width - len(p):width] = torch.tensor(p)
    return ids, mask, width


def gens(n: int, seed: int = 0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_pass_equals_full_pass_with_one_layer_even_after_the_completion_changes(family):
    """One layer: the prompt's keys and values depend on the prompt tokens only, so a cache written
    while the completion was all masks is still exact once tokens are committed (padded batch; Dream's
    first completion token is predicted from the last prompt position, which is recomputed)."""
    a = adapter(family, layers=1)
    prefill, after = a.prompt_cache_fns()
    ids, mask, width = padded_batch(a, 6)
    with torch.no_grad():
        first, cache = prefill(ids, mask, width)
        assert torch.allclose(first, a.logits(ids, mask), atol=1e-5, rtol=0)
        ids[:, width + 1] = 60
        ids[:, width] = 61  # the first completion token too: Dream reads it from the last prompt position
        cached = after(ids, mask, cache)
        assert cached.shape[1] == 6
        assert torch.allclose(cached, a.logits(ids, mask)[:, width:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_deeper_cache_is_exact_until_the_completion_changes(family):
    """Two layers: reusing the cache for the same sequence is exact; after a commit it is stale (the
    prompt's deeper keys saw the old completion), so the logits differ: an approximation, not a bug."""
    a = adapter(family, layers=2)
    prefill, after = a.prompt_cache_fns()
    ids, mask, width = padded_batch(a, 6)
    with torch.no_grad():
        _, cache = prefill(ids, mask, width)
        assert cache[0][0].shape[2] == width - (1 if family == "dream" else 0)
        assert torch.allclose(after(ids, mask, cache), a.logits(ids, mask)[:, width:], atol=1e-5, rtol=0)
        ids[:, width:width + 3] = torch.tensor([60, 61, 62])
        assert not torch.allclose(after(ids, mask, cache), a.logits(ids, mask)[:, width:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_sampler_with_cache_refreshed_every_pass_equals_no_cache(family, threshold):
    a = adapter(family, layers=2, seed=2)
    base = dict(gen_length=8, block_length=4, temperature=1.0, threshold=threshold)
    plain = generate(a.logits, PROMPTS, a.mask_id, a.pad_id, SamplerConfig(**base), gens(3))
    every = generate(a.logits, PROMPTS, a.mask_id, a.pad_id, SamplerConfig(**base, prompt_cache=True, prompt_cache_refresh=1),
                     gens(3), a.prompt_cache_fns())
    assert torch.equal(every.completions, plain.completions) and torch.equal(every.commit_step, plain.commit_step)
    one_layer = adapter(family, layers=1, seed=2)  # and never refreshed, one layer: still the same
    plain = generate(one_layer.logits, PROMPTS, a.mask_id, a.pad_id, SamplerConfig(**base), gens(3))
    cached = generate(one_layer.logits, PROMPTS, a.mask_id, a.pad_id, SamplerConfig(**base, prompt_cache=True), gens(3),
                      one_layer.prompt_cache_fns())
    assert torch.equal(cached.completions, plain.completions) and torch.equal(cached.commit_step, plain.commit_step)


def test_shifted_model_needs_two_prompt_tokens():
    a = adapter("dream", layers=1)
    prefill, _ = prompt_cache_fns(a.model, shift_logits=True)
    ids = torch.tensor([[40, a.mask_id, a.mask_id]])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        prefill(ids, torch.ones_like(ids), 1)

"""The built-in tiny dLLM: save/load, padding invariance, reproducible init, character tokenizer."""
import pytest
import torch

from dllm_rl.models.tiny import SPECIAL_TOKENS, TinyDLM, TinyDLMConfig, build_tokenizer



SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def make_model(seed=0, **overrides):
    model = TinyDLM(TinyDLMConfig(**{**SMALL, **overrides})).eval()
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(scope="module")
def model():
    return make_model(num_layers=2)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_save_and_load_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = TinyDLM.from_pretrained(tmp_path).eval()
    assert loaded.config.hidden_size == 32 and loaded.config.num_layers == 2
    ids = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    # everything that is not saved (e.g. rotary frequencies) must be rebuilt on load, not left as
    # uninitialised memory: identical logits, on every load
    again = TinyDLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = model(ids).logits
        assert torch.allclose(loaded(ids).logits, want, atol=1e-6, rtol=0)
        assert torch.allclose(again(ids).logits, want, atol=1e-6, rtol=0)


def test_logits_shape_and_default_attention_mask(model):
    ids = torch.randint(4, 100, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids)).logits
    assert out.shape == (3, 7, model.config.vocab_size)
    assert torch.equal(out, model(ids).logits)  # attention_mask=None means all ones


def test_left_padded_rows_equal_rows_alone(model):
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(4, 100, (n,), generator=g) for n in (6, 3, 1)]
    width = 6
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    with torch.no_grad():
        batch = model(ids, mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert torch.allclose(batch[i, width - len(r):], alone, atol=1e-5), i
        # the pad token ids under the mask must not matter either
        other = model(ids.masked_fill(mask == 0, 57), mask).logits
    real = mask.bool()
    assert torch.allclose(other[real], batch[real], atol=1e-5)


def test_attention_is_bidirectional(model):
    ids = torch.tensor([[10, 11, 12, 13]])
    changed = torch.tensor([[10, 11, 12, 50]])
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position sees the last token


def test_reset_parameters_is_reproducible_and_seed_dependent():
    a, b, c = make_model(5), make_model(5), make_model(6)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), n
        if not n.endswith("norm.weight"):
            assert not torch.equal(pa, pc), n
        else:
            assert bool((pa == 1).all()), n
    # the global RNG does not influence it
    torch.manual_seed(123)
    d = make_model(5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), d.parameters()))


def test_tokenizer_round_trips_text_with_newlines(tokenizer):
    text = "12 + 3 = 15\n4x4:\n1234\n  ~!{}[]\"'\\"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one id per character
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids[11]) == "\n"


def test_tokenizer_special_tokens_match_the_model_config(tokenizer):
    cfg = TinyDLMConfig()
    assert tokenizer.pad_token_id == cfg.pad_token_id == 0
    assert tokenizer.mask_token_id == cfg.mask_token_id == 1
    assert tokenizer.eos_token_id == cfg.eos_token_id == 2
    assert len(tokenizer) == cfg.vocab_size
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)
    ids = tokenizer("a\tb", add_special_tokens=False)["input_ids"]  # tab is not in the vocabulary
    assert ids[1] == tokenizer.unk_token_id
    assert tokenizer.decode([5, tokenizer.eos_token_id, tokenizer.mask_token_id], skip_special_tokens=True) == "!"


def test_tokenizer_save_and_load(tmp_path, tokenizer):
    from transformers import PreTrainedTokenizerFast
    tokenizer.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    text = "line one\nline two"
    assert loaded(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.mask_token_id == 1

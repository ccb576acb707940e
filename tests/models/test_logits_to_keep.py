"""transformers' ``logits_to_keep`` in the native families (tiny, LLaDA, Dream) and in the adapter.

Model level: an int n keeps the last n positions (0 = all), a slice or a 1-d index tensor names them;
the logits equal the full logits sliced, and the final norm and output head really run on the kept
positions only (forward hooks record their input's sequence length). Adapter level: the logits of a
slice or of the last n positions are the position-aligned full logits sliced, for Dream's shifted
logits too (position k is read at raw k-1, position 0 at its own raw output); the kwarg reaches the
base model through peft and DDP-style wrappers, and a model whose forward lacks it is sliced afterwards."""
import pytest
import torch
from torch import nn

from dllm_rl.diffusion.likelihood import Sequences, completion_logits, token_logprobs
from dllm_rl.models.adapter import ModelAdapter, base_model, takes_logits_to_keep
from dllm_rl.models.lora import apply_lora
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig

from .conftest import tiny_model

T = 10
PAD_LENGTHS = (0, 2, 4)  # left padding of each row
VARIANTS = ("tiny", "llada", "dream", "llada-tied", "dream-tied")
ATOL, RTOL = 1e-6, 1e-5  # fp32: the same arithmetic on fewer rows


def build(variant: str) -> nn.Module:
    """A small random fp32 model of ``variant`` in eval mode."""
    if variant == "tiny":
        model = TinyDLM(TinyDLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
        model.reset_parameters(torch.Generator().manual_seed(0))
        return model.eval()
    if variant == "llada-tied":
        return tiny_model("llada", weight_tying=True)
    if variant == "dream-tied":
        return tiny_model("dream", tie_word_embeddings=True)
    return tiny_model(variant)


def head_modules(model: nn.Module, variant: str) -> dict[str, nn.Module]:
    """The final norm and (where it is a module, i.e. untied) the output head of ``model``."""
    if variant == "tiny":
        return {"norm": model.norm, "head": model.lm_head}
    if variant.startswith("llada"):
        tr = model.model.transformer
        return {"norm": tr["ln_f"], **({} if variant.endswith("tied") else {"head": tr["ff_out"]})}
    return {"norm": model.model.norm, **({} if variant.endswith("tied") else {"head": model.lm_head})}


class Recorder:
    """Forward hooks recording the sequence length (dim 1) of each module's input."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.seen = {name: [] for name in modules}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.seen[name].append(args[0].shape[1])
        return hook

    def clear(self):
        for v in self.seen.values():
            v.clear()

    def lengths(self) -> set[int]:
        return {n for v in self.seen.values() for n in v}

    def remove(self):
        for h in self.handles:
            h.remove()


def batch(model: nn.Module):
    """Random ids [3, T] left-padded by PAD_LENGTHS, with their attention mask."""
    pad = model.config.pad_token_id
    ids = torch.randint(6, 90, (len(PAD_LENGTHS), T), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    for i, p in enumerate(PAD_LENGTHS):
        ids[i, :p], attn[i, :p] = pad, 0
    return ids, attn


def adapter_of(model: nn.Module, variant: str) -> ModelAdapter:
    c = base_model(model).config
    return ModelAdapter(model=model, tokenizer=None, mask_id=c.mask_token_id, eos_id=c.eos_token_id,
                        pad_id=c.pad_token_id, shift_logits=variant.startswith("dream"))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=RTOL)


class Plain(nn.Module):
    """A model whose forward has no ``logits_to_keep``: the adapter must slice its output itself."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    @property
    def config(self):
        return self.inner.config


class DDPLike(nn.Module):
    """Wraps a model in ``.module`` and forwards every argument, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# -- model forward ------------------------------------------------------------------------------------

KEEPS = [  # (logits_to_keep, how to slice the full logits, positions the head sees)
    (3, lambda x: x[:, -3:], 3),
    (1, lambda x: x[:, -1:], 1),
    (T, lambda x: x, T),
    (0, lambda x: x, T),
    (slice(2, 7), lambda x: x[:, 2:7], 5),
    (slice(0, 4), lambda x: x[:, 0:4], 4),
    (slice(1, None, 3), lambda x: x[:, 1::3], 3),
    (torch.tensor([0, 4, 9]), lambda x: x[:, [0, 4, 9]], 3),
    (torch.tensor([7, 2]), lambda x: x[:, [7, 2]], 2),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_keeps_the_named_positions_and_runs_the_head_there_only(variant):
    model = build(variant)
    ids, attn = batch(model)
    rec = Recorder(head_modules(model, variant))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attn).logits
        assert full.shape[:2] == (3, T) and rec.lengths() == {T}
        for keep, want, n in KEEPS:
            rec.clear()
            out = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
            assert close(out, want(full)), (variant, keep)
            assert rec.lengths() == {n}, (variant, keep, rec.seen)
    rec.remove()


@pytest.mark.parametrize("variant", ["tiny", "llada", "dream"])
def test_keeping_positions_changes_nothing_upstream(variant):
    """Only the norm and head are restricted: a left-padded row's kept logits still equal the row alone."""
    model = build(variant)
    ids, attn = batch(model)
    p = PAD_LENGTHS[2]
    with torch.no_grad():
        padded = model(input_ids=ids[2:], attention_mask=attn[2:], logits_to_keep=3).logits
        alone = model(input_ids=ids[2:, p:], attention_mask=attn[2:, p:], logits_to_keep=3).logits
    assert torch.allclose(padded, alone, atol=1e-5, rtol=1e-4)


# -- adapter --------------------------------------------------------------------------------------------

SLICES = [(0, 1), (0, 4), (0, T), (1, T), (3, 8), (5, T), (T - 1, T), (2, 3)]
LASTS = [1, 4, T - 1, T]


def check_adapter(adapter: ModelAdapter, ids, attn, rec: Recorder | None, passes_through: bool):
    """adapter.logits of slices and last-n equal the aligned full logits sliced; ``rec`` (hooks on the
    base model's head) sees at most the kept number of positions when the kwarg reaches the model,
    else the full length."""
    with torch.no_grad():
        full = adapter.logits(ids, attn)
        assert full.shape[:2] == (3, T)
        for a, b in SLICES:
            if rec:
                rec.clear()
            out = adapter.logits(ids, attn, logits_to_keep=slice(a, b))
            assert close(out, full[:, a:b]), (adapter.shift_logits, a, b)
            if rec:
                lengths = rec.lengths()
                if passes_through and (a, b) != (0, T):
                    assert lengths and max(lengths) <= max(b - a, 1) and max(lengths) < T, (a, b, rec.seen)
                else:
                    assert lengths == {T}, (a, b, rec.seen)
        for n in LASTS:
            out = adapter.logits(ids, attn, logits_to_keep=n)
            assert close(out, full[:, -n:]), (adapter.shift_logits, n)
        # out-of-range ints mean "all", as in transformers
        for n in (0, T + 5):
            assert close(adapter.logits(ids, attn, logits_to_keep=n), full)
    return full


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_slices_equal_the_aligned_full_logits(variant):
    model = build(variant)
    adapter = adapter_of(model, variant)
    assert takes_logits_to_keep(model)
    ids, attn = batch(model)
    rec = Recorder(head_modules(model, variant))
    full = check_adapter(adapter, ids, attn, rec, passes_through=True)
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=attn).logits
    if adapter.shift_logits:  # position k is read at raw k-1, position 0 at its own raw output
        assert torch.equal(full[:, 1:], raw[:, :-1]) and torch.equal(full[:, :1], raw[:, :1])
    else:
        assert torch.equal(full, raw)
    rec.remove()


@pytest.mark.parametrize("variant", ["dream", "dream-tied"])
def test_dream_slices_read_one_position_earlier(variant):
    """A slice starting after 0 asks the model for the raw positions one earlier (the same count);
    one starting at 0 reuses raw position 0 for aligned position 0."""
    model = build(variant)
    adapter = adapter_of(model, variant)
    ids, attn = batch(model)
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=attn).logits
        assert close(adapter.logits(ids, attn, logits_to_keep=slice(4, 9)), raw[:, 3:8])
        assert close(adapter.logits(ids, attn, logits_to_keep=slice(0, 5)), torch.cat([raw[:, :1], raw[:, :4]], dim=1))
        assert close(adapter.logits(ids, attn, logits_to_keep=slice(0, 1)), raw[:, :1])
        assert close(adapter.logits(ids, attn, logits_to_keep=2), raw[:, T - 3:T - 1])


@pytest.mark.parametrize("variant", ["tiny", "llada", "dream"])
def test_reference_logits_take_logits_to_keep(variant):
    model = build(variant)
    adapter = adapter_of(model, variant)
    ids, attn = batch(model)
    with torch.no_grad():
        full = adapter.reference_logits(ids, attn)
        assert close(adapter.reference_logits(ids, attn, logits_to_keep=slice(3, 8)), full[:, 3:8])
        assert close(adapter.reference_logits(ids, attn, logits_to_keep=slice(0, 5)), full[:, :5])
        assert close(adapter.reference_logits(ids, attn, logits_to_keep=4), full[:, -4:])


@pytest.mark.parametrize("variant", ["tiny", "llada", "dream"])
def test_the_kwarg_reaches_the_base_model_through_lora(variant):
    model = build(variant)
    peft_model = apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # nonzero adapters, so the peft model's logits are not the base's
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    peft_model.eval()
    assert takes_logits_to_keep(peft_model)
    adapter = adapter_of(peft_model, variant)
    ids, attn = batch(model)
    rec = Recorder(head_modules(model, variant))  # hooks on the base model's modules
    full = check_adapter(adapter, ids, attn, rec, passes_through=True)
    rec.clear()
    with torch.no_grad():  # the model's own forward through peft, and the reference (adapters off)
        assert close(peft_model(input_ids=ids, attention_mask=attn, logits_to_keep=3).logits,
                     peft_model(input_ids=ids, attention_mask=attn).logits[:, -3:])
        ref_full = adapter.reference_logits(ids, attn)
        rec.clear()
        ref = adapter.reference_logits(ids, attn, logits_to_keep=slice(3, 8))
        assert rec.lengths() == {5}
    assert close(ref, ref_full[:, 3:8])
    assert not torch.allclose(ref_full, full, atol=1e-3)  # the adapters are really on for the policy
    rec.remove()


@pytest.mark.parametrize("variant", ["tiny", "dream"])
def test_the_kwarg_reaches_the_model_inside_a_ddp_style_wrapper(variant):
    model = build(variant)
    wrapped = DDPLike(model)
    assert takes_logits_to_keep(wrapped)
    ids, attn = batch(model)
    rec = Recorder(head_modules(model, variant))
    check_adapter(adapter_of(wrapped, variant), ids, attn, rec, passes_through=True)
    rec.remove()


@pytest.mark.parametrize("variant", ["tiny", "llada", "dream"])
def test_a_model_without_the_kwarg_is_sliced_afterwards(variant):
    model = build(variant)
    plain = Plain(model)
    assert not takes_logits_to_keep(plain)
    ids, attn = batch(model)
    rec = Recorder(head_modules(model, variant))
    full = check_adapter(adapter_of(plain, variant), ids, attn, rec, passes_through=False)
    with torch.no_grad():
        assert torch.equal(full, adapter_of(model, variant).logits(ids, attn))
    rec.remove()


# -- likelihood -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["tiny", "llada", "dream"])
def test_token_logprobs_equal_those_of_the_full_logits(variant):
    """Completion log-probs through the adapter (head on the completion positions only) equal a
    float64 log-softmax of the full aligned logits at the completion positions."""
    model = build(variant)
    adapter = adapter_of(model, variant)
    ids, attn = batch(model)
    tp, length = 6, T - 6
    seqs = Sequences(prompt_ids=ids[:, :tp], prompt_mask=attn[:, :tp], completion_ids=ids[:, tp:],
                     rows=torch.arange(3), num_rows=3)
    completion_in = seqs.completion_ids.clone()
    completion_in[:, ::2] = adapter.mask_id  # partially masked, as the estimators feed it
    rec = Recorder(head_modules(model, variant))
    with torch.no_grad():
        logp = token_logprobs(adapter.logits, seqs, completion_in)
        assert rec.lengths() == {length}  # the head ran on the completion positions only
        logits = completion_logits(adapter.logits, seqs, completion_in)
        full = adapter.logits(torch.cat([seqs.prompt_ids, completion_in], 1), attn)
        # a logits_fn without the kwarg takes the slicing route: the same values
        sliced = token_logprobs(lambda i, a: adapter.logits(i, a), seqs, completion_in)
    want = torch.log_softmax(full[:, tp:].double(), -1).gather(-1, seqs.completion_ids[..., None]).squeeze(-1)
    assert logp.dtype == torch.float32 and logp.shape == (3, length)
    assert close(logits, full[:, tp:])
    assert torch.allclose(logp.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(logp, sliced, atol=ATOL, rtol=RTOL)
    rec.remove()


def test_adapter_refuses_a_strided_slice():
    model = build("tiny")
    ids, attn = batch(model)
    with pytest.raises(ValueError, match="consecutive"):
        adapter_of(model, "tiny").logits(ids, attn, logits_to_keep=slice(0, ids.shape[1], 2))

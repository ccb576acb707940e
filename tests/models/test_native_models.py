"""Native LLaDA and Dream: published parameter names (strict loading), padding invariance,
bidirectional attention, bf16, gradient checkpointing, unsupported configs rejected."""
import pytest
import torch
from safetensors.torch import save_file

from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.errors import UsageError
from dllm_rl.models.dream import DreamConfig, DreamModel
from dllm_rl.models.llada import LLaDAConfig, LLaDAModelLM
from dllm_rl.pipeline import load_model

from .conftest import family_tokenizer, tiny_model, write_checkpoint

FAMILIES = ("llada", "dream")


def published_keys(family: str, layers: int = 2) -> set[str]:
    """Tensor names of a ``layers``-layer checkpoint, spelled as in the released
    model.safetensors.index.json of GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B."""
    if family == "llada":
        per_block = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]
        keys = {f"model.transformer.blocks.{i}.{m}.weight" for i in range(layers) for m in per_block}
        return keys | {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"model.layers.{i}"
        keys |= {f"{p}.self_attn.{m}.{t}" for m in ("q_proj", "k_proj", "v_proj") for t in ("weight", "bias")}
        keys |= {f"{p}.self_attn.o_proj.weight", f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        keys |= {f"{p}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    return keys


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_names_are_the_published_ones(family):
    model = tiny_model(family)
    assert set(model.state_dict()) == published_keys(family)
    # a state dict under exactly those names loads strictly into a fresh model
    fresh = tiny_model(family, seed=1)
    fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True)
    ids = torch.randint(0, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_with_published_names_load_through_the_family(tmp_path, family):
    """A folder whose safetensors were written by name (not by our save_pretrained) loads strictly."""
    source = tiny_model(family, seed=3)
    source.config.save_pretrained(tmp_path)
    family_tokenizer(family).save_pretrained(tmp_path)
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    assert set(tensors) == published_keys(family)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    adapter = load_model(RunConfig(model=ModelConfig(name=str(tmp_path))), None)
    ids = torch.randint(0, 90, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(adapter.model(ids).logits, source(ids).logits)


@pytest.mark.parametrize("family, old, new", [("llada", "attn_out", "o_proj"), ("dream", "mlp.down_proj", "mlp.ff_out")])
def test_a_renamed_tensor_is_an_error_not_a_random_weight(tmp_path, family, old, new):
    source = tiny_model(family)
    source.config.save_pretrained(tmp_path)
    family_tokenizer(family).save_pretrained(tmp_path)
    tensors = {k.replace(old, new): v.contiguous() for k, v in source.state_dict().items()}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="does not match the model: missing keys .*" + old.split(".")[-1]):
        load_model(RunConfig(model=ModelConfig(name=str(tmp_path))), None)


def _left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_each_row_alone(family):
    model = tiny_model(family)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(6, 90, (n,), generator=g) for n in (11, 4, 1, 7)]
    ids, mask = _left_pad(rows, pad_id=0)
    with torch.no_grad():
        batch = model(ids, mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert torch.allclose(batch[i, ids.shape[1] - len(r):], alone, atol=1e-5, rtol=0), i
        # what the pad ids are must not matter either
        other = model(ids.masked_fill(mask == 0, 77), mask).logits
        # and the mask is what makes it so: attending to the padding changes the short rows
        leaky = model(ids, torch.ones_like(mask)).logits
    real = mask.bool()
    assert torch.allclose(other[real], batch[real], atol=1e-5, rtol=0)
    assert not torch.allclose(leaky[1, -4:], batch[1, -4:], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_bidirectional(family):
    model = tiny_model(family)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    with torch.no_grad():
        a = model(ids).logits
        b = model(ids.index_fill(1, torch.tensor([4]), 50)).logits
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-4)  # the first position sees the last token


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_tracks_float32(family):
    model = tiny_model(family, std=0.05)
    ids = torch.randint(6, 90, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(ids).logits.log_softmax(-1)
        got = model.to(torch.bfloat16)(ids).logits
    assert got.dtype == torch.bfloat16
    assert (got.float().log_softmax(-1) - want).abs().max() < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    ids = torch.randint(6, 90, (2, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(family).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(ids, mask).logits.float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6, rtol=1e-5), name


def test_gqa_heads_share_keys():
    """Dream has fewer key/value heads than query heads (4 vs 28 in the 7B); the k/v weights say so."""
    model = tiny_model("dream")
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (64, 64) and attn.k_proj.weight.shape == (32, 64)


@pytest.mark.parametrize("build, field", [
    (lambda: LLaDAModelLM(LLaDAConfig(d_model=64, n_heads=4, n_layers=1, mlp_hidden_size=64, vocab_size=50,
                                      embedding_size=50, block_type="sequential", eos_token_id=1, pad_token_id=1)), "block_type"),
    (lambda: DreamModel(DreamConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                    num_hidden_layers=1, vocab_size=50, use_sliding_window=True,
                                    pad_token_id=1, bos_token_id=1, eos_token_id=1)), "use_sliding_window"),
])
def test_unsupported_architecture_switches_are_rejected(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_unsupported_config_in_a_folder_is_one_usage_error(tmp_path):
    write_checkpoint(tmp_path, "llada")
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["layer_norm_type"] = "default"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="layer_norm_type"):
        load_model(RunConfig(model=ModelConfig(name=str(tmp_path))), None)

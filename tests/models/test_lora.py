"""LoRA on the real families: targets checked against the module tree, reference = adapters off,
adapters saved, reloaded and merged with identical outputs."""
import pytest
import torch

from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.errors import UsageError
from dllm_rl.models import lora
from dllm_rl.pipeline import load_model

IDS = torch.randint(6, 90, (2, 12), generator=torch.Generator().manual_seed(0))


def adapter_for(folder, **model):
    return load_model(RunConfig(model=ModelConfig(name=str(folder), **model)), None)


def _perturb(model, seed=0):
    """Set the LoRA matrices from a keyed generator (B is zero at init, A comes from the global RNG),
    so the adapters change the output and the test does not depend on what ran before it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("family, bad", [("llada", "o_proj"), ("llada", "down_proj"), ("dream", "attn_out")])
def test_a_target_that_matches_nothing_is_an_error(checkpoints, family, bad):
    targets = ["q_proj", bad]
    with pytest.raises(UsageError) as exc:
        adapter_for(checkpoints[family], lora=True, lora_targets=targets)
    msg = str(exc.value)
    assert repr(bad) in msg and "matches no module" in msg
    valid = "attn_out" if family == "llada" else "o_proj"
    assert valid in msg.split("valid module names:")[1]


@pytest.mark.parametrize("family, per_block, heads", [("llada", 7, 1), ("dream", 7, 0)])
def test_default_targets_adapt_every_projection(checkpoints, family, per_block, heads):
    """LLaDA's defaults (q k v attn_out ff_proj up_proj ff_out) also match the output head
    model.transformer.ff_out, as peft's suffix rule does for every public LLaDA recipe."""
    adapter = adapter_for(checkpoints[family], lora=True, lora_r=4, lora_alpha=8)
    wrapped = [n for n, m in adapter.model.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)]
    assert len(wrapped) == 2 * per_block + heads
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_reference_is_the_base_with_adapters_off(checkpoints, family):
    base = adapter_for(checkpoints[family])
    tuned = adapter_for(checkpoints[family], lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    _perturb(tuned.model)
    with torch.no_grad():
        want = base.logits(IDS)
        assert torch.allclose(tuned.reference_logits(IDS), want, atol=1e-6)
        assert not torch.allclose(tuned.logits(IDS), want, atol=1e-3)
    tuned.freeze_reference()
    assert tuned.reference_model is None  # no second copy of the weights


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_adapters_save_reload_and_merge_identically(checkpoints, tmp_path, family):
    tuned = adapter_for(checkpoints[family], lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    _perturb(tuned.model, seed=1)
    with torch.no_grad():
        want = tuned.logits(IDS)
    tuned.model.save_pretrained(tmp_path / "adapter")
    reloaded = adapter_for(checkpoints[family], adapter=str(tmp_path / "adapter"))
    with torch.no_grad():
        assert torch.equal(reloaded.logits(IDS), want)
        merged = lora.merge(reloaded.model)
        assert not hasattr(merged, "disable_adapter")
        assert torch.allclose(tuned.logits(IDS, model=merged), want, atol=1e-4, rtol=1e-4)
    # the merged model saves under the published names and loads strictly as a plain checkpoint
    merged.save_pretrained(tmp_path / "merged")
    tuned.tokenizer.save_pretrained(tmp_path / "merged")
    again = adapter_for(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(again.logits(IDS), want, atol=1e-4, rtol=1e-4)


def test_adapter_folder_errors_are_one_line(checkpoints, tmp_path):
    with pytest.raises(UsageError, match="no adapter_config.json"):
        adapter_for(checkpoints["llada"], adapter=str(tmp_path))
    tuned = adapter_for(checkpoints["dream"], lora=True, lora_r=4)
    tuned.model.save_pretrained(tmp_path / "dream-adapter")
    with pytest.raises(UsageError, match="pass it with --adapter"):
        adapter_for(tmp_path / "dream-adapter")

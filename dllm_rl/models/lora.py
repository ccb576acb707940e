"""LoRA through peft, with targets checked against the real module tree: a target name that matches
no module is an error (several public RL recipes list o_proj/gate_proj/down_proj for LLaDA, whose
modules are attn_out/ff_proj/ff_out, and silently train nothing there). Also: loading a trained
adapter and merging adapters into the base weights."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def adaptable_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules LoRA can wrap (linear, embedding and convolution layers)."""
    return [name for name, module in model.named_modules() if name and isinstance(module, ADAPTABLE)]


def matches(target: str, name: str) -> bool:
    """peft's rule for a plain target name: the module name equals it or ends with '.' + it."""
    return name == target or name.endswith("." + target)


def check_targets(model: nn.Module, targets: list[str] | tuple[str, ...], what: str = "the model") -> list[str]:
    """The module names each target adapts; UsageError naming the bad target and the valid leaf names
    when a target matches nothing."""
    if not targets:
        raise UsageError("model.lora_targets is empty: name at least one module to adapt")
    names = adaptable_names(model)
    adapted = []
    for target in targets:
        hit = [n for n in names if matches(target, n)]
        if not hit:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise UsageError(f"LoRA target {target!r} matches no module of {what}; valid module names: {', '.join(leaves)}")
        adapted.extend(hit)
    return adapted


def apply_lora(model: nn.Module, targets: list[str] | tuple[str, ...], r: int, alpha: int, dropout: float,
               what: str = "the model"):
    """Wrap ``model`` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise UsageError(f"model.lora_r must be at least 1, got {r}")
    check_targets(model, targets, what)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def load_adapter(model: nn.Module, path: str | Path, trainable: bool = False):
    """``model`` with the trained adapter in folder ``path`` (written by ``save_pretrained``)."""
    from peft import PeftModel

    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(f"adapter folder {str(path)!r} has no adapter_config.json (expected the output of a LoRA run, "
                         "e.g. runs/<run>/final)")
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UsageError(f"adapter {str(path)!r} does not fit this base model: {str(exc).splitlines()[0]}") from None


def merge(model: nn.Module) -> nn.Module:
    """The base model with the adapters folded into its weights (a plain model again)."""
    if hasattr(model, "merge_and_unload"):
        with torch.no_grad():
            return model.merge_and_unload()
    return model

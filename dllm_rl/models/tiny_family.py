"""The ``tiny`` model family: builds the tiny dLLM and pretrains its base checkpoint on the run's
task the first time it is needed, then caches it (keyed by everything that determines the weights)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..atomic import atomic_write_dir
from ..task import Task
from . import lora
from .adapter import ModelAdapter
from .pretrain import pretrain
from .tiny import TinyDLM, TinyDLMConfig, build_tokenizer

TINY_FORMAT = 1  # bump when the model code or the pretraining recipe changes what a checkpoint holds
LEGACY_MIN_LR_RATIO = 0.1  # the only schedule before pretrain.min_lr_ratio existed: its keys leave the option out


def cache_root() -> Path:
    return Path(os.environ.get("DLLM_RL_CACHE", Path.home() / ".cache" / "dllm_rl"))


def make_adapter(model: TinyDLM, tokenizer) -> ModelAdapter:
    return ModelAdapter(model=model, tokenizer=tokenizer, mask_id=tokenizer.mask_token_id,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                        stop_ids=(tokenizer.eos_token_id,), shift_logits=False, prompt_style="direct",
                        name="tiny", lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def base_checkpoint(run: RunConfig, task: Task, gen_length: int, progress=None) -> Path:
    """Path of the cached base checkpoint for this task and pretraining config; trains it if missing."""
    pretrain_key = dataclasses.asdict(run.pretrain)
    if pretrain_key["min_lr_ratio"] == LEGACY_MIN_LR_RATIO:
        del pretrain_key["min_lr_ratio"]
    key = json.dumps({"format": TINY_FORMAT, "task": run.task.name, "task_config": dataclasses.asdict(task.config),
                      "pretrain": pretrain_key, "gen_length": gen_length}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_root() / "tiny" / f"{run.task.name}-{digest}"
    if (path / "config.json").is_file():
        return path
    from ..pipeline import require_train_examples

    require_train_examples(task, run.task.name)  # the base model pretrains on them
    p = run.pretrain
    config = TinyDLMConfig(hidden_size=p.hidden_size, num_layers=p.num_layers, num_heads=p.num_heads,
                           intermediate_size=p.intermediate_size)
    model = TinyDLM(config)
    model.reset_parameters(torch.Generator().manual_seed(p.seed))
    tokenizer = build_tokenizer()
    on_step = None
    if progress is not None:
        bar = progress.add_task(f"pretraining tiny base model on {run.task.name}", total=p.steps)
        on_step = lambda step, loss: progress.update(bar, advance=1, description=f"pretraining tiny on {run.task.name} (loss {loss:.3f})")
    started = time.perf_counter()
    losses = pretrain(make_adapter(model, tokenizer), task, p, gen_length, on_step=on_step)
    if progress is not None and not (progress.console.is_terminal or progress.console.is_jupyter):  # logs: a line
        progress.console.print(f"pretraining tiny base model on {run.task.name}: done in {time.perf_counter() - started:.0f}s "
                               f"(loss {losses[-1]:.3f})", markup=False, highlight=False)
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(key)

    return atomic_write_dir(path, write)


def prepare(run: RunConfig, task: Task, progress=None) -> Path:
    """The family's cache hook (``dllm-rl sweep`` calls it before parallel workers): the base checkpoint."""
    from ..pipeline import gen_length_of

    return base_checkpoint(run, task, gen_length_of(run, task, "direct"), progress)


def load(run: RunConfig, task: Task, progress=None) -> ModelAdapter:
    """The tiny model for ``run``: pretrained on the task's train split (cached) at the rollout length."""
    from transformers import PreTrainedTokenizerFast

    path = prepare(run, task, progress)
    model = TinyDLM.from_pretrained(path).eval()
    adapter = make_adapter(model, PreTrainedTokenizerFast.from_pretrained(path))
    m = run.model
    if m.adapter:
        adapter.model = lora.load_adapter(model, m.adapter, trainable=True)
    elif m.lora:
        targets = tuple(m.lora_targets or adapter.lora_targets)
        adapter.model, adapter.lora_targets = lora.apply_lora(model, targets, m.lora_r, m.lora_alpha, m.lora_dropout, "tiny"), targets
    return adapter

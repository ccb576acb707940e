"""Full-state checkpoints on disk: layout, manifest, retention, policy weights, resume checks.

A checkpoint is a folder ``<run_dir>/checkpoints/step-NNNNNN`` written atomically (temporary sibling,
then rename) holding accelerate's state (optimizer, scheduler, per-process RNG states, and the
sharded model for FSDP/DeepSpeed), the policy's trainable weights (``model.safetensors`` for full
fine-tuning, ``adapter_model.safetensors`` for LoRA), ``trainer_state.json`` (step, data position,
curve, validation, best) and, written last, ``manifest.json`` with every file's size and CRC-32.
``CheckpointManager`` is what the trainer uses: save, verify and load, retention, resume."""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import atomic_write_text, reporting_write_errors
from .distributed import broadcast_from_main, collective_write_dir
from .errors import OutputError, UsageError

FORMAT = 1
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
BEST = "best"
RESUME_FREE = ("optim.max_steps", "output.", "eval.")
"""Settings a resumed run may change: they do not alter the training trajectory up to the checkpoint."""


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:06d}"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished step checkpoint, oldest first (temporary folders are hidden)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest(run_dir: Path) -> Path:
    """The newest step checkpoint of a run, or a one-line UsageError when there is none."""
    found = step_checkpoints(run_dir)
    if not found:
        raise UsageError(f"--resume: no checkpoint in {str(checkpoints_dir(run_dir))!r} (runs write one every "
                         "output.checkpoint_every steps; run without --resume to start afresh)")
    return found[-1][1]


def crc32(path: Path) -> str:
    """CRC-32 of a file (~2 GB/s): catches flipped or zeroed bytes that keep the size."""
    value = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def write_manifest(folder: Path) -> None:
    """Record every file's size and checksum; written last, so a checkpoint with a valid manifest
    is complete."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "crc32": crc32(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=1, sort_keys=True))


def verify(folder: Path, checksums: bool = True) -> dict[str, Any]:
    """The checkpoint's trainer state after checking the manifest (sizes, and checksums unless
    ``checksums`` is off); UsageError naming what is wrong."""
    def corrupt(why: str) -> UsageError:
        return UsageError(f"checkpoint {str(folder)!r} is corrupt or incomplete ({why}); delete it to resume "
                          "from an earlier one, or run without --resume")

    if not folder.is_dir():
        raise UsageError(f"checkpoint {str(folder)!r} does not exist")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise corrupt(f"no {MANIFEST}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise corrupt(f"unreadable {MANIFEST}") from None
    try:
        for name, info in files.items():
            path = folder / name
            if not path.is_file():
                raise corrupt(f"missing {name}")
            if path.stat().st_size != info["bytes"]:
                raise corrupt(f"{name} has {path.stat().st_size} bytes, expected {info['bytes']}")
            if checksums and crc32(path) != info["crc32"]:
                raise corrupt(f"{name} does not match its checksum")
    except (KeyError, TypeError, AttributeError):
        raise corrupt(f"unreadable {MANIFEST}") from None
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        state["step"], state["config"], state["train_state"]
    except (OSError, ValueError, KeyError, TypeError):
        raise corrupt(f"unreadable {STATE_FILE}") from None
    if isinstance(state["step"], bool) or not isinstance(state["step"], int) or not isinstance(state["config"], dict) \
            or not isinstance(state["train_state"], dict):
        raise corrupt(f"{STATE_FILE} has fields of the wrong type (step, config, train_state)")
    if state.get("format") != FORMAT:
        raise corrupt(f"format {state.get('format')!r}, this dllm-rl reads format {FORMAT}")
    return state


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings that differ between a checkpoint's config and the current one, except RESUME_FREE.
    A setting the checkpoint lacks (it predates the option) counts as the option's default."""
    from .config import config_differences
    free = lambda k: any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE)
    return [f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in config_differences(saved, current)
            if not free(k)]


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (0 = keep all). Each folder is renamed to
    a hidden name first, so a crash mid-delete never leaves a half-deleted checkpoint visible."""
    found = step_checkpoints(run_dir)
    if keep <= 0 or len(found) <= keep:
        return
    for _, path in found[:-keep]:
        doomed = path.with_name(f".deleting-{path.name}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def clean_temporary(run_dir: Path) -> None:
    """Remove hidden leftovers of interrupted writes or deletes (never a finished checkpoint)."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


# -- the policy's trainable weights ---------------------------------------------------------------

def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def save_policy(model: torch.nn.Module, folder: Path) -> None:
    """Trainable weights: LoRA adapters in peft's format, else the whole model (tied weights once)."""
    if is_peft(model):
        model.save_pretrained(folder)
        return
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
        model.config.save_pretrained(folder)  # the folder loads with from_pretrained too


def load_policy(model: torch.nn.Module, folder: Path) -> None:
    """Inverse of ``save_policy``: strict, every trainable weight must be present."""
    if is_peft(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter weights do not fit the model: unexpected {unexpected[:3]}")
        return
    from safetensors.torch import load_model

    load_model(model, str(folder / "model.safetensors"), strict=True)


# -- the trainer's interface ------------------------------------------------------------------------

class CheckpointManager:
    """Full-state checkpoints of one run folder for a trainer on accelerate: every process writes its
    share into one atomic folder (weights in our format, optimizer and RNG states by accelerate),
    loads are verified against the manifest and the run's configuration, retention keeps the newest
    ``keep``. A write that fails (disk full) is one line naming the folder and the intact checkpoint."""

    def __init__(self, accelerator, run_dir: Path | None, policy: torch.nn.Module, config: dict[str, Any],
                 keep: int = 0, ema=None, tokenizer=None, sharded: bool = False):
        self.accelerator, self.run_dir, self.policy, self.config = accelerator, run_dir, policy, config
        self.keep, self.ema, self.tokenizer = keep, ema, tokenizer
        self.is_main = accelerator.is_main_process
        if not sharded:  # FSDP/DeepSpeed save their sharded model through accelerate itself
            accelerator.register_save_state_pre_hook(self._save_model_hook)
            accelerator.register_load_state_pre_hook(self._load_model_hook)

    def _save_model_hook(self, models, weights, output_dir) -> None:
        """accelerate's save_state writes optimizer and RNG states; the policy goes in our format
        (trainable weights only, without wrapper prefixes: loadable with any process count)."""
        weights.clear()
        if self.is_main:
            save_policy(self.policy, Path(output_dir))
            if self.ema is not None:
                self.ema.save(Path(output_dir))

    def _load_model_hook(self, models, input_dir) -> None:
        load_policy(self.policy, Path(input_dir))
        if self.ema is not None:
            self.ema.load(Path(input_dir))
        models.clear()

    @property
    def best_path(self) -> Path:
        return checkpoints_dir(self.run_dir) / BEST

    def write(self, path: Path, state: dict[str, Any]) -> Path:
        """Write a checkpoint folder at ``path`` holding ``state`` (step, data position, training state)."""
        def fill(tmp: Path) -> None:
            self.accelerator.save_state(str(tmp))
            self.accelerator.wait_for_everyone()
            if self.is_main:
                if hasattr(self.tokenizer, "save_pretrained"):
                    self.tokenizer.save_pretrained(tmp)
                record = {"format": FORMAT, "config": self.config, "num_processes": self.accelerator.num_processes, **state}
                atomic_write_text(tmp / STATE_FILE, json.dumps(record, indent=1) + "\n")
                write_manifest(tmp)

        with self.reporting_write_errors(path):
            collective_write_dir(self.accelerator, path, fill)
        return path

    def save_step(self, state: dict[str, Any]) -> Path:
        """A step checkpoint (``state["step"]``), then retention of the newest ``keep``."""
        path = self.write(step_dir(self.run_dir, state["step"]), state)
        if self.is_main:
            prune(self.run_dir, self.keep)
        self.accelerator.wait_for_everyone()
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Restore weights, optimizer and RNG states from ``path``; returns its saved state. One-line
        errors when it is corrupt or was written by a different run configuration."""
        problem = None
        if self.is_main:  # checksums are read once, by the main process
            try:
                verify(path)
            except UsageError as exc:
                problem = str(exc)
        problem = broadcast_from_main(self.accelerator, problem)
        if problem:
            raise UsageError(problem)
        saved = verify(path, checksums=False)
        changes = config_changes(saved["config"], self.config)
        if changes:
            raise UsageError(f"checkpoint {str(path)!r} belongs to another configuration ({'; '.join(changes[:3])}); "
                             "resume with the same settings or use a new --run-dir")
        try:
            self.accelerator.load_state(str(path))
        except Exception as exc:  # damaged files fail in many ways (safetensors, pickle, zip, torch)
            why = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
            why = f"{type(exc).__name__}: {why}" if why else type(exc).__name__
            raise UsageError(f"checkpoint {str(path)!r} could not be loaded ({why}); delete it to resume from an "
                             "earlier one, or run without --resume") from None
        return saved

    def start(self, resume: bool, checkpoint_every: int) -> Path | None:
        """Before training: with ``resume``, the newest checkpoint (to ``load``); without, refuse a
        folder holding another run's step checkpoints (retention would delete the new run's own
        ones, and a later --resume could pick the old ones). Cleans leftovers of interrupted writes."""
        if self.run_dir is None:
            if resume:
                raise UsageError("--resume needs a run folder")
            return None
        path = None
        if resume:
            path = latest(self.run_dir)
        elif checkpoint_every and step_checkpoints(self.run_dir):
            raise UsageError(f"{str(checkpoints_dir(self.run_dir))!r} holds checkpoints of an earlier run: pass "
                             "--resume to continue it, or delete them or choose another --run-dir")
        if self.is_main:
            clean_temporary(self.run_dir)
        self.accelerator.wait_for_everyone()
        return path

    def intact(self) -> str:
        """Which checkpoint a failed write left to resume from, in words."""
        found = step_checkpoints(self.run_dir) if self.run_dir is not None else []
        if not found:
            return "no step checkpoint was written yet, so the run starts afresh"
        return f"the last complete checkpoint is {str(found[-1][1])!r}: free space and rerun with --resume"

    def reporting_write_errors(self, path: Path):
        """One line naming ``path`` and the intact checkpoint when a write there fails."""
        return reporting_write_errors(path, self.intact)

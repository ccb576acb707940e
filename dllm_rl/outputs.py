"""A run's output locations, checked before any work is spent: each path exists as the right kind
(a folder where a folder goes, a file where a file goes) or can be created, the folders are
writable, and the run folder's disk holds one checkpoint by the estimate of ``checkpoint_bytes``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .atomic import clean_leftovers
from .errors import UsageError

RUN_FOLDERS = ("checkpoints", "final", "trackers")
RUN_FILES = ("config.yaml", "environment.json", "base_metrics.json", "metrics.jsonl", "completions.jsonl",
             "completions.jsonl.gz")


def _folder(path: Path, what: str, option: str) -> None:
    """``path`` is (or can be made) a writable folder; one line naming it otherwise."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a file, not a folder; move it away or choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); choose another {option}") from None


def check_outputs(results_dir: Path, result_file: Path, run_dir: Path) -> None:
    """Every path a run writes, checked (and its folders created) before the model loads; leftovers
    of writes interrupted earlier (killed processes) are removed."""
    _folder(results_dir, "results folder", "--results-dir")
    if result_file.is_dir():
        raise UsageError(f"results file {str(result_file)!r} is a folder; move it away or choose another --results-dir")
    _folder(run_dir.parent, "run folder", "--run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run folder {str(run_dir)!r} is a file, not a folder; move it away or choose another --run-dir")
    for name in RUN_FOLDERS:
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise UsageError(f"{str(run_dir / name)!r} is a file where the run keeps a folder; move it away or "
                             "choose another --run-dir")
    for name in RUN_FILES:
        if (run_dir / name).is_dir():
            raise UsageError(f"{str(run_dir / name)!r} is a folder where the run writes a file; move it away or "
                             "choose another --run-dir")
    _folder(run_dir, "run folder", "--run-dir")
    clean_leftovers(results_dir)
    clean_leftovers(run_dir)


def checkpoint_bytes(model: torch.nn.Module, checkpoints: bool, final: bool) -> int:
    """Estimated bytes of one step checkpoint (trainable weights and Adam's two moments, in the
    weights' dtype) plus, with ``final``, the exported model (every weight, or only the trainable
    ones for a LoRA adapter)."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    lora = hasattr(model, "peft_config")
    return (3 * trainable if checkpoints else 0) + ((trainable if lora else everything) if final else 0)


def check_space(run_dir: Path, needed: int, what: str) -> None:
    """One line before training when the run folder's disk has less free space than ``needed``."""
    if needed <= 0:
        return
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        mb = lambda n: f"{n / 2**20:,.0f} MB"
        raise UsageError(f"{str(run_dir)!r} has {mb(free)} free, {what} needs about {mb(needed)}; free space "
                         "or choose another --run-dir")

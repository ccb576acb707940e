"""What a run folder records besides checkpoints: the resolved config, the environment (package
versions, git commit), per-step metrics and completions, and optional accelerate trackers."""
from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .atomic import atomic_write_text

PACKAGES = ("dllm-rl", "torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "numpy",
            "click", "rich", "pyyaml", "deepspeed", "tensorboard", "wandb")


def git_commit(folder: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``folder`` (this package by default);
    ``unknown`` outside a checkout (e.g. installed from a wheel)."""
    folder = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(plugins: dict[str, str]) -> dict[str, Any]:
    """What produced a results file beyond package versions: the git commit of this checkout and,
    for each chosen plugin (``{"algorithm": name, ...}``), where it came from and its distribution's
    version (a plugin package's own version, or dllm-rl's for built-ins)."""
    from . import registry

    out: dict[str, Any] = {"git": git_commit(), "plugins": {}}
    for kind, name in plugins.items():
        try:
            entry = registry.model(name) if kind == "model" else registry.get(f"{kind}s", name)
        except UsageError:  # e.g. a data task, resolved outside the registry
            out["plugins"][kind] = {"name": name}
            continue
        dist = entry.source[len("entry point ("):-1] if entry.source.startswith("entry point (") else "dllm-rl"
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        out["plugins"][kind] = {"name": name, "target": entry.target, "distribution": dist, "version": version}
    return out


def write_run_info(run_dir: Path, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """``config.yaml`` (the resolved config, reusable as a recipe) and ``environment.json``."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    env = {"versions": package_versions(), "git": git_commit(), "platform": platform.platform(),
           "argv": sys.argv, **extra}
    atomic_write_text(run_dir / "environment.json", json.dumps(env, indent=1, sort_keys=True) + "\n")


class StepLog:
    """A JSON-lines file with one record per line carrying ``"step"`` (plain or gzip). Resuming from
    step s drops the records of steps >= s (written after the checkpoint, before the crash)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.gz = path.suffix == ".gz"
        kept: list[str] = []
        if resume_step is not None and path.exists():
            kept = [line for line in self._read_lines() if _step_of(line) is not None and _step_of(line) < resume_step]
        text = "".join(line + "\n" for line in kept)
        if self.gz:
            tmp = path.with_name(f".{path.name}.tmp")
            with gzip.open(tmp, "wt") as fh:
                fh.write(text)
            os.replace(tmp, path)
        else:
            atomic_write_text(path, text)
        self.fh = gzip.open(path, "at") if self.gz else open(path, "a")

    def _read_lines(self) -> list[str]:
        """Every complete line; a tail cut off by a crash is dropped."""
        lines: list[str] = []
        opener = gzip.open if self.gz else open
        try:
            with opener(self.path, "rt") as fh:
                for line in fh:
                    if line.endswith("\n"):
                        lines.append(line.rstrip("\n"))
        except (OSError, EOFError):  # a gzip member cut short: keep what was readable
            pass
        return lines

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def check_trackers(names: list[str]) -> list[str]:
    """Validate ``output.report_to`` against accelerate's trackers and what is installed."""
    if not names:
        return []
    from accelerate.utils import LoggerType
    import accelerate.utils as au

    valid = [t.value for t in LoggerType]
    for name in names:
        if name not in valid:
            raise UsageError(f"output.report_to: unknown tracker {name!r}; valid: {', '.join(valid)}")
        check = getattr(au, f"is_{name}_available", None)
        if name != "all" and check is not None and not check():
            raise UsageError(f"output.report_to: {name} is not installed (pip install {name.replace('_', '-')})")
    return list(names)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record (trackers log numbers only)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, dict):
                out.update({f"{k}/{kk}": vv for kk, vv in scalars(v).items()})
            continue
        out[k] = v
    return out

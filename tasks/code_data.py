"""Loading code-benchmark data: the Hugging Face Hub through ``datasets`` by default, or a local copy.

A local copy (``task.data_path``) is a JSON Lines, JSON or Parquet file in the hub's schema, or a
folder with one such file per split (``test.jsonl``, ``train.parquet``, ...)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dllm_rl.errors import UsageError

SUFFIXES = (".jsonl", ".json", ".parquet")
INSTALL_HINT = "install the code extra: pip install 'dllm-rl[code]'"


def cache_root() -> Path:
    """The toolkit's cache folder (``$DLLM_RL_CACHE``, else ~/.cache/dllm_rl), as the tiny model family
    uses; not imported from there because that module pulls in torch and transformers."""
    return Path(os.environ.get("DLLM_RL_CACHE", Path.home() / ".cache" / "dllm_rl"))


def require(module: str):
    """Import an optional dependency of the code tasks, or fail with one line saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"the code tasks need the {module.split('.')[0]!r} package; {INSTALL_HINT}") from None


def local_file(data_path: str, split: str | None = None) -> Path:
    """The file for ``split`` inside ``data_path`` (a file, or a folder of per-split files)."""
    path = Path(data_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and split is not None:
        for suffix in SUFFIXES:
            if (path / f"{split}{suffix}").is_file():
                return path / f"{split}{suffix}"
        raise UsageError(f"data_path {data_path!r} has no {split} file; "
                         f"expected {split}.jsonl, {split}.json or {split}.parquet")
    raise UsageError(f"data_path {data_path!r} does not exist")


def read_rows(path: Path) -> list[dict]:
    """Rows of a local JSON Lines / JSON / Parquet file."""
    try:
        if path.suffix == ".parquet":
            return [dict(r) for r in require("datasets").Dataset.from_parquet(str(path), keep_in_memory=True)]
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc}") from None


def load_rows(hub_id: str, split: str, name: str | None = None, data_path: str | None = None) -> list[dict]:
    """Rows of ``split``: from ``data_path`` if given, else ``datasets.load_dataset(hub_id, name)``."""
    if data_path:
        return read_rows(local_file(data_path, split))
    datasets = require("datasets")
    try:
        ds = datasets.load_dataset(hub_id, name, split=split)
    except Exception as exc:  # offline, gated, renamed: say how to work around it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load {hub_id!r} ({split}) from the Hugging Face Hub: {first}; "
                         f"download it and pass --set task.data_path=PATH") from None
    return [dict(r) for r in ds]

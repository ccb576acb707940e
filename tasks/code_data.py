"""Loading code-benchmark data: the Hugging Face Hub through ``datasets`` by default, or a local copy.

A local copy (``task.data_path``) is a JSON Lines, JSON or Parquet file in the hub's schema, a
folder with one such file per split (``test.jsonl``, ``train.parquet``, ...), or a hub snapshot folder
(``hf download ID --repo-type dataset --local-dir DIR``: ``full/test-00000-of-00001.parquet``, ...)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dllm_rl import hub_data
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


def load_rows(hub_id: str, split: str, name: str | None = None, data_path: str | None = None, *,
              task: str) -> list[dict]:
    """Rows of ``split``: from ``data_path`` if given, else the hub through ``datasets`` (probed once, cached
    copies used offline; a failure is one line naming ``--set task.data_path``)."""
    if data_path:
        path = Path(data_path).expanduser()
        if path.is_dir() and not any((path / f"{split}{suffix}").is_file() for suffix in SUFFIXES):
            snapshot = hub_data.split_files(path, split, name)  # e.g. full/test-00000-of-00001.parquet
            if snapshot:
                return hub_data.read_files(snapshot, task)
        return read_rows(local_file(data_path, split))
    require("datasets")
    return hub_data.hub_rows(hub_id, split, task=task, config=name)

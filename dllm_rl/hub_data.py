"""Rows of a data set split, from the Hugging Face Hub through ``datasets`` or from a local copy.

A task names its hub data set and offers a ``data_path`` setting for offline use. ``data_path`` may be
- a folder with one data file (or shard set) per split: ``train.jsonl``, ``test.parquet``, or a hub
  snapshot such as ``main/test-00000-of-00001.parquet`` (files are matched by split name, and by the
  config name when the folder holds several configs);
- a folder written by ``datasets``' ``save_to_disk`` (a DatasetDict);
- a file path containing ``{split}``, e.g. ``data/gsm8k-{split}.jsonl``;
- a single file (.jsonl, .json, .parquet, .csv), which then holds the test split only.

Offline: before the first hub access the Hub is probed once, with a short timeout; if it does not
answer, ``huggingface_hub`` and ``datasets`` are put in offline mode for the rest of the process, so
cached copies are still read and a missing one fails at once with one line naming the fix, instead of
``datasets``' ~25 s of retries.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .errors import UsageError

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
PROBE_TIMEOUT_S = 3.0
"""How long a probe waits for a server (DNS included) before calling it unreachable."""
_hub_probed = False
"""Whether this process has probed the Hub (it does so at most once)."""
_hub_failure: str | None = None
"""Why the probe could not reach the Hub; None if it could, or if it was not probed."""


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a server answers a HEAD request for ``url`` within ``timeout`` (any HTTP status counts),
    else why not, in a few words. Runs in a daemon thread, so a hanging DNS lookup is bounded too."""
    outcome: list[str | None] = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered, with an error status: reachable
            outcome.append(None)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            outcome.append(str(reason) or type(exc).__name__)

    thread = threading.Thread(target=probe, name="dllm-rl-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def hub_offline() -> bool:
    """Whether the Hub is to be treated as offline: the user's ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``,
    or a failed probe of the Hub endpoint (done once a process), after which offline mode is switched on
    in ``huggingface_hub`` and ``datasets`` (and in the environment, for subprocesses)."""
    global _hub_probed, _hub_failure
    import datasets.config
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return True
    if not _hub_probed:
        _hub_probed = True
        reason = unreachable(constants.ENDPOINT)
        if reason is not None:
            _hub_failure = f"{constants.ENDPOINT} cannot be reached: {reason}"
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True
            datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    return _hub_failure is not None


def offline_reason() -> str:
    """Why the Hub is offline, for error messages: the failed probe, else the user's setting."""
    return _hub_failure or "offline mode is on (HF_HUB_OFFLINE)"


@contextlib.contextmanager
def _quiet():
    """No per-file progress bars from ``datasets`` while a task reads its data."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def download_hint(hub_id: str) -> str:
    return (f"download it once with `hf download {hub_id} --repo-type dataset --local-dir DIR` "
            "and pass --set task.data_path=DIR")


def load_rows(hub_id: str, split: str, *, task: str, config: str | None = None,
              data_path: str | None = None) -> list[dict[str, Any]]:
    """All rows of ``split`` as dicts, in the data set's order: from ``data_path`` if given, else the hub."""
    with _quiet():
        if data_path:
            return _local_rows(data_path, split, task=task, config=config)
        return hub_rows(hub_id, split, task=task, config=config)


def hub_rows(hub_id: str, split: str, *, task: str, config: str | None = None) -> list[dict[str, Any]]:
    """Rows of a hub data set split (a cached copy when offline), or one line saying how to get it."""
    import datasets

    name = f"{hub_id}" + (f" ({config})" if config else "")
    offline = hub_offline()
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except OSError as exc:  # no network / offline mode without a cached copy / unknown data set
        reason = (f"{offline_reason()}, and there is no cached copy" if offline
                  else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise UsageError(f"task {task!r} cannot load {name} split {split!r} from the Hugging Face Hub "
                         f"({reason}); {download_hint(hub_id)}") from None
    return ds.to_list()


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in BUILDERS and not p.name.startswith("."))


def split_files(root: Path, split: str, config: str | None) -> list[Path]:
    """Data files under ``root`` whose name is the split (``test.jsonl``, ``test-00000-of-00001.parquet``)."""
    def is_split(p: Path) -> bool:
        stem = p.name[: -len(p.suffix)]
        return stem == split or stem.startswith((f"{split}-", f"{split}_", f"{split}."))

    files = [p for p in _data_files(root) if is_split(p)]
    if config:
        in_config = [p for p in files if config in p.relative_to(root).parts[:-1]]
        files = in_config or files
    if len({p.parent for p in files}) > 1:
        folders = ", ".join(sorted({str(p.parent) for p in files}))
        raise UsageError(f"data_path {str(root)!r} holds {split} files in several folders ({folders}); point it at one")
    return files


@contextlib.contextmanager
def no_usage_ping():
    """``datasets.load_dataset`` of local files without network access: it otherwise sends a usage count
    for its json/parquet/csv builder (``HF_UPDATE_DOWNLOAD_COUNTS``), which waits on an unreachable server."""
    import datasets

    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts


def read_files(files: list[Path], task: str) -> list[dict[str, Any]]:
    """Rows of local data files (one builder type), with no network access."""
    import datasets

    builders = {BUILDERS[p.suffix] for p in files}
    if len(builders) != 1:
        raise UsageError(f"task {task!r}: mixed file types in {', '.join(map(str, files))}")
    try:
        with no_usage_ping():
            return datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train").to_list()
    except Exception as exc:  # a malformed user file: say which, in one line
        raise UsageError(f"task {task!r} cannot read {', '.join(map(str, files))}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _local_rows(data_path: str, split: str, *, task: str, config: str | None) -> list[dict[str, Any]]:
    templated = "{split}" in data_path
    path = Path(data_path.replace("{split}", split)).expanduser()
    if not path.exists():
        raise UsageError(f"task {task!r}: data_path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix not in BUILDERS:
            raise UsageError(f"task {task!r}: data_path {str(path)!r} is not a {', '.join(BUILDERS)} file")
        if not templated and split != "test":
            raise UsageError(f"task {task!r}: data_path {str(path)!r} is one file, read as the test split; for the "
                             f"{split} split give a folder with one file per split or a path containing {{split}}")
        return read_files([path], task)
    if (path / "dataset_dict.json").is_file():
        import datasets

        dd = datasets.load_from_disk(str(path))
        if split not in dd:
            raise UsageError(f"task {task!r}: {str(path)!r} has no {split!r} split; it has {', '.join(dd)}")
        return dd[split].to_list()
    files = split_files(path, split, config)
    if not files:
        raise UsageError(f"task {task!r}: no {split} data under {str(path)!r} (expected e.g. {split}.jsonl "
                         f"or {split}-00000-of-00001.parquet)")
    return read_files(files, task)


def holdout(n: int, size: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Split indices 0..n-1 into (kept, held out) with ``size`` drawn by ``rng``; both sorted."""
    if not 0 <= size <= n:
        raise UsageError(f"validation_size must be within 0..{n} (the train split has {n} rows), got {size}")
    held = set(rng.sample(range(n), size))
    return [i for i in range(n) if i not in held], sorted(held)


def official_splits(split: str, cache: dict[str, list], load, to_examples, validation_size: int,
                    rng: random.Random) -> list:
    """Examples of ``split`` for a hub dataset with official train/test splits: test as published,
    validation a keyed hold-out of train, train the rest. ``load(split) -> rows`` and
    ``to_examples(source, rows, indices)`` are the task's; results are cached in ``cache``."""
    if split not in cache:
        if split == "test":
            rows = load("test")
            cache["test"] = to_examples("test", rows, range(len(rows)))
        else:
            rows = load("train")
            keep, held = holdout(len(rows), validation_size, rng)
            cache["train"] = to_examples("train", rows, keep)
            cache["validation"] = to_examples("train", rows, held)
    return list(cache[split])

"""Results files (one JSON per model/algorithm/task/seed run), atomic writes, and the leaderboard."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .errors import UsageError

SCHEMA = "dllm-rl/result/v1"
TIMING_KEYS = ("timing",)
"""Fields that legitimately differ between two identical runs (wall-clock); all else is reproducible."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and an atomic rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
    return Path(path)


def result_filename(model: str, task: str, algorithm: str, seed: int) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)
    return f"{safe(model)}__{safe(task)}__{safe(algorithm)}__seed{seed}.json"


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"results folder {str(folder)!r} does not exist")
    out = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            data["_path"] = str(path)
            out.append(data)
    return out


def _fmt(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def leaderboard(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Paper-style table: one row per model + algorithm (mean ± std over seeds, in %), one column per
    task x length (primary metric; secondary metrics such as Sudoku's cell accuracy in their own
    columns), a base-model row per model and a delta row per algorithm against that base."""
    if not results:
        raise UsageError("no results files found (expected *.json written by `dllm-rl run`)")
    columns: list[tuple[str, str, str]] = []  # (task, length, metric)
    for r in results:
        task, primary = r["task"], r["protocol"]["primary_metric"]
        for length, row in r["metrics"].items():
            metrics = [primary] + sorted(k for k in row if k not in (primary, "n", "nfe", "seconds") and not k.endswith("_stderr"))
            for m in metrics:
                if (task, length, m) not in columns:
                    columns.append((task, length, m))
    columns.sort(key=lambda c: (c[0], int(c[1]), c[2] != _primary(results, c[0]), c[2]))

    def values(rs, source, col):
        return [r[source][col[1]][col[2]] for r in rs if r["task"] == col[0] and col[1] in r.get(source, {}) and col[2] in r[source][col[1]]]

    header = ["model", "algorithm"] + [f"{t} L={l}" + ("" if m == _primary(results, t) else f" {m}") for t, l, m in columns]
    rows: list[list[str]] = []
    for model in sorted({r["model"] for r in results}):
        mine = [r for r in results if r["model"] == model]
        rows.append([model, "(base)"] + [_fmt(values(mine, "base", c)) for c in columns])
        for algo in sorted({r["algorithm"] for r in mine}):
            runs = [r for r in mine if r["algorithm"] == algo]
            rows.append([model, algo] + [_fmt(values(runs, "metrics", c)) for c in columns])
            deltas = []
            for c in columns:
                after, before = values(runs, "metrics", c), values(runs, "base", c)
                deltas.append(f"{(statistics.fmean(after) - statistics.fmean(before)) * 100:+.1f}" if after and before else "-")
            rows.append([model, f"Δ {algo} vs base"] + deltas)
    return header, rows


def _primary(results, task: str) -> str:
    return next(r["protocol"]["primary_metric"] for r in results if r["task"] == task)


def atomic_write_dir(path: str | Path, write) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then swap it into ``path``: a reader
    never sees a half-written checkpoint, and an interrupted write leaves the old one intact."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def without_seconds(metrics: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Metrics per length minus wall-clock seconds (kept apart so results files are reproducible)."""
    if metrics is None:
        return None
    return {k: {m: v for m, v in row.items() if m != "seconds"} for k, row in metrics.items()}

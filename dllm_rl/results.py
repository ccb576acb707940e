"""Results files (one JSON per model/algorithm/task/seed run) and the leaderboard."""
from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_dir, atomic_write_text  # noqa: F401  (re-exported)
from .errors import UsageError

SCHEMA = "dllm-rl/result/v1"
TIMING_KEYS = ("timing",)
"""Fields that legitimately differ between two identical runs (wall-clock); all else is reproducible."""


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
    return Path(path)


def result_filename(model: str, task: str, algorithm: str, seed: int, label: str = "") -> str:
    """``model__task__algorithm[__label]__seedN.json``: the label keeps variants of one algorithm apart."""
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)
    variant = f"__{safe(label)}" if label else ""
    return f"{safe(model)}__{safe(task)}__{safe(algorithm)}{variant}__seed{seed}.json"


def load_results(folder: str | Path, skipped: list[tuple[Path, str]] | None = None) -> list[dict[str, Any]]:
    """Every results file under ``folder`` (recursively), each with ``_path`` and ``_experiment`` (its
    subfolder: one study). Files that cannot be read as results go to ``skipped`` as (path, why):
    not text, not valid JSON (truncated), JSON of another kind, or a results file with a field missing."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise UsageError(f"results folder {str(folder)!r} {what}; pass the folder holding results files "
                         "(default: runs/results, where `dllm-rl run` writes them)")
    out = []
    for path in sorted(folder.rglob("*.json")):
        why = None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            why = "not text (a binary file)"
        except json.JSONDecodeError as exc:
            why = f"not valid JSON ({exc.msg} at line {exc.lineno}; cut short?)"
        except OSError as exc:
            why = f"unreadable ({exc.strerror or exc})"
        else:
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                why = FOREIGN
            else:
                why = malformed(data)
        if why is not None:
            if skipped is not None:
                skipped.append((path, why))
            continue
        data["_path"] = str(path)
        data["_experiment"] = path.parent.relative_to(folder).as_posix().strip(".")  # "" at the top level
        out.append(data)
    return out


FOREIGN = "not a dllm-rl results file"


def malformed(result: dict[str, Any]) -> str | None:
    """What is wrong with a results file's fields that compare reads, or None."""
    for key, kind in (("model", str), ("task", str), ("algorithm", str), ("seed", int), ("protocol", dict)):
        if not isinstance(result.get(key), kind):
            return f"field {key!r} missing or not a {kind.__name__}"
    if not isinstance(result["protocol"].get("primary_metric"), str):
        return "field 'protocol.primary_metric' missing"
    for key in ("base", "metrics"):
        block = result.get(key)
        if block is not None and not (isinstance(block, dict) and all(
                isinstance(row, dict) and all(isinstance(v, (int, float)) for v in row.values()) for row in block.values())):
            return f"field {key!r} is not a mapping of length -> metric values"
        if block is not None and any(not str(k).isdigit() for k in block):
            return f"field {key!r} has a length that is not an integer"
    training = result.get("training")
    if training is not None:
        if not isinstance(training, dict):
            return "field 'training' is not a mapping"
        for key in ("curve", "validation"):
            points = training.get(key) or []
            if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("step"), int) for p in points):
                return f"field 'training.{key}' is not a list of points with an integer step"
    return None


def cost_problem(result: dict[str, Any]) -> str | None:
    """What a results file with training lacks for ``costs`` (steps, batch, length, NFE, train time)."""
    training, timing = result.get("training") or {}, result.get("timing")
    for key, kind in (("steps", int), ("rollouts_per_step", int), ("gen_length", int), ("rollout_nfe_per_sample", (int, float))):
        if not isinstance(training.get(key), kind):
            return f"field 'training.{key}' missing or of the wrong type"
    if not isinstance(timing, dict) or not isinstance(timing.get("train_s"), (int, float)):
        return "field 'timing.train_s' missing"
    return None


def skipped_lines(skipped: list[tuple[Path, str]], shown: int = 3) -> list[str]:
    """stderr lines for files compare skipped: each damaged file, and other JSON files counted."""
    lines = [f"skipped {str(p)!r}: {why}" for p, why in skipped if why != FOREIGN]
    foreign = [p for p, why in skipped if why == FOREIGN]
    if foreign:
        names = ", ".join(repr(str(p)) for p in foreign[:shown]) + (f" and {len(foreign) - shown} more" if len(foreign) > shown else "")
        lines.append(f"skipped {len(foreign)} JSON file(s) that are not results files: {names}")
    return lines


def by_study(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by study (subfolder; "" for the folder itself), each run's names plain within it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["_experiment"], []).append({**r, "_experiment": ""})
    return dict(sorted(out.items()))


ERRORS = ("std", "sem")


def spread(values: list[float], error: str = "std") -> float:
    """Sample standard deviation over seeds (``std``) or the standard error of their mean (``sem``)."""
    if error not in ERRORS:
        raise UsageError(f"unknown error bar {error!r}; valid: {', '.join(ERRORS)}")
    if len(values) < 2:
        return 0.0
    sd = statistics.stdev(values)
    return sd / len(values) ** 0.5 if error == "sem" else sd


def _fmt(values: list[float], scale: float = 100.0, error: str = "std") -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {spread(values, error) * scale:.1f}"


def group_name(result: dict[str, Any]) -> str:
    """How a run's algorithm is shown: its name, plus the variant label when it has one, plus the
    subfolder it was found in (one experiment per folder: runs of different grids never average)."""
    label, experiment = result.get("label") or "", result.get("_experiment") or ""
    name = f"{result['algorithm']} [{label}]" if label else result["algorithm"]
    return f"{name} ({experiment})" if experiment else name


def _seeds(counts: list[int]) -> str:
    counts = [c for c in counts if c]
    if not counts:
        return "-"
    return str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def leaderboard(results: list[dict[str, Any]], error: str = "std") -> tuple[list[str], list[list[str]]]:
    """Paper-style table: one row per model + algorithm (+ variant label), mean ± ``error`` over seeds in
    %, one column per task x length (primary metric; secondary metrics such as Sudoku's cell accuracy
    in their own columns), a base-model row per model, a delta row per algorithm against that base, and
    a last column ``n``: the number of seeds (runs) averaged (a range when tasks differ)."""
    if not results:
        raise UsageError("no results files found (expected *.json written by `dllm-rl run`)")
    spread([], error)  # validate the choice before any work
    columns: list[tuple[str, str, str]] = []  # (task, length, metric)
    for r in results:
        task, primary = r["task"], r["protocol"]["primary_metric"]
        for length, row in (r["metrics"] or {}).items():
            metrics = [primary] + sorted(k for k in row if k not in (primary, "n", "nfe", "seconds") and not k.endswith("_stderr"))
            for m in metrics:
                if (task, length, m) not in columns:
                    columns.append((task, length, m))
    columns.sort(key=lambda c: (c[0], int(c[1]), c[2] != _primary(results, c[0]), c[2]))

    def values(rs, source, col):
        return [r[source][col[1]][col[2]] for r in rs
                if r["task"] == col[0] and col[1] in (r.get(source) or {}) and col[2] in r[source][col[1]]]

    header = ["model", "algorithm"] + [f"{t} L={l}" + ("" if m == _primary(results, t) else f" {m}") for t, l, m in columns] + ["n"]
    rows: list[list[str]] = []
    for model in sorted({r["model"] for r in results}):
        mine = [r for r in results if r["model"] == model]
        rows.append([model, "(base)"] + [_fmt(values(mine, "base", c), error=error) for c in columns] + ["-"])
        for name in sorted({group_name(r) for r in mine}):
            runs = [r for r in mine if group_name(r) == name]
            counts = [len(values(runs, "metrics", c)) for c in columns]
            rows.append([model, name] + [_fmt(values(runs, "metrics", c), error=error) for c in columns] + [_seeds(counts)])
            deltas = []
            for c in columns:
                after, before = values(runs, "metrics", c), values(runs, "base", c)
                deltas.append(f"{(statistics.fmean(after) - statistics.fmean(before)) * 100:+.1f}" if after and before else "-")
            rows.append([model, f"Δ {name} vs base"] + deltas + [_seeds(counts)])
    return header, rows


def tidy(results: list[dict[str, Any]], error: str = "std", study: str = "") -> list[dict[str, Any]]:
    """The leaderboard as tidy records (one per model x row x task x length x metric; values as
    fractions, not %): ``row`` is ``base``, ``after`` or ``delta``; ``mean``, the spread over seeds
    under the name of ``error`` (None for one seed) and ``n`` seeds."""
    spread([], error)
    out = []
    for model in sorted({r["model"] for r in results}):
        mine = [r for r in results if r["model"] == model]
        groups = [("(base)", mine, "base")] + [(n, [r for r in mine if group_name(r) == n], "after")
                                               for n in sorted({group_name(r) for r in mine})]
        for name, runs, kind in groups:
            for task, length, metric in sorted({(r["task"], l, m) for r in runs for l, row in (r.get(kind if kind == "base" else "metrics") or {}).items()
                                                for m in row if m not in ("n", "nfe", "seconds") and not m.endswith("_stderr")}):
                def vals(source):
                    return [r[source][length][metric] for r in runs
                            if r["task"] == task and length in (r.get(source) or {}) and metric in r[source][length]]
                values = vals("base" if kind == "base" else "metrics")
                record = {"study": study, "model": model, "algorithm": name if kind == "after" else "(base)",
                          "task": task, "length": int(length), "metric": metric}
                err = spread(values, error) if len(values) > 1 else None
                out.append({**record, "row": kind, "mean": statistics.fmean(values), error: err, "n": len(values)})
                before = vals("base")
                if kind == "after" and before:
                    out.append({**record, "row": "delta", "mean": statistics.fmean(values) - statistics.fmean(before),
                                error: None, "n": len(values)})
    return out


def mixed_bases(results: list[dict[str, Any]], shown: int = 3) -> list[str]:
    """One line per model + task + length whose runs were scored against base models that differ (the
    same recipe pretrained on another CPU, or a variant's own base): the ``(base)`` row then averages
    them, and each Δ row is against its own runs' base only."""
    lines = []
    for model, task in sorted({(r["model"], r["task"]) for r in results}):
        mine = [r for r in results if r["model"] == model and r["task"] == task and r.get("base")]
        primary = _primary(results, task)
        for length in sorted({l for r in mine for l in r["base"]}, key=int):
            by_base: dict[float, list[str]] = {}
            for r in mine:
                if primary in r["base"].get(length, {}):
                    names = by_base.setdefault(round(r["base"][length][primary], 6), [])
                    if group_name(r) not in names:
                        names.append(group_name(r))
            if len(by_base) > 1:
                parts = []
                for value, names in sorted(by_base.items()):
                    more = f" and {len(names) - shown} more" if len(names) > shown else ""
                    parts.append(f"{value * 100:.1f} % for {', '.join(sorted(names)[:shown])}{more}")
                lines.append(f"{model} on {task} L={length}: {len(by_base)} different base models "
                             f"({'; '.join(parts)}); the (base) row averages them, each Δ row is against its own runs' base")
    return lines


def costs(results: list[dict[str, Any]], error: str = "std", last: int = 10) -> tuple[list[str], list[list[str]]]:
    """What each model + algorithm (+ label) spent per task, for comparisons at equal budgets: RL steps,
    rollouts per step, training minutes, seconds per step, rollout NFE per sample (and its ratio to
    the fixed L/2-step schedule), and the mean training reward over the last ``last`` steps."""
    trained = [r for r in results if r.get("training") and cost_problem(r) is None]  # the CLI names the others
    if not trained:
        raise UsageError("no results file records training (runs of `dllm-rl run` do)")
    spread([], error)
    header = ["model", "algorithm", "task", "steps", "rollouts/step", "train min", "s/step", "rollout NFE", "NFE / (L/2)",
              f"reward (last {last})", "n"]

    def fmt(values, digits=2):
        if len(values) < 2:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.fmean(values):.{digits}f} ± {spread(values, error):.{digits}f}"

    rows = []
    for key in sorted({(r["model"], group_name(r), r["task"]) for r in trained}):
        runs = [r for r in trained if (r["model"], group_name(r), r["task"]) == key]
        tr = [r["training"] for r in runs]
        minutes = [r["timing"]["train_s"] / 60 for r in runs]
        per_step = [r["timing"]["train_s"] / max(1, t["steps"]) for r, t in zip(runs, tr)]
        nfe = [t["rollout_nfe_per_sample"] for t in tr]
        ratio = [t["rollout_nfe_per_sample"] / max(1, t["gen_length"] // 2) for t in tr]
        reward = [statistics.fmean(c["reward"] for c in t["curve"][-last:]) for t in tr if t["curve"]]
        steps = sorted({t["steps"] for t in tr})
        rows.append([*key, "/".join(map(str, steps)), "/".join(map(str, sorted({t["rollouts_per_step"] for t in tr}))),
                     fmt(minutes, 1), fmt(per_step, 2), fmt(nfe, 1), fmt(ratio, 2), fmt(reward, 3) if reward else "-", str(len(runs))])
    return header, rows


def at_budget(results: list[dict[str, Any]], seconds: float, error: str = "std") -> tuple[list[str], list[list[str]]]:
    """Held-out learning curves compared at equal wall-clock: per model + algorithm (+ label) and task,
    each run's last periodic validation score reached within ``seconds`` of training (the recorded
    per-step times summed), averaged over seeds, with the RL step it was taken at."""
    if seconds <= 0:
        raise UsageError(f"the wall-clock budget must be positive, got {seconds} s")
    spread([], error)
    header = ["model", "algorithm", "task", f"validation at {seconds:g} s", "step reached", "steps run", "n"]
    rows = []
    runs = [r for r in results if (r.get("training") or {}).get("validation") and (r.get("timing") or {}).get("step_s")]
    if not runs:
        raise UsageError("no results file has periodic validation scores and step times (runs with eval.every > 0 record them)")
    for key in sorted({(r["model"], group_name(r), r["task"]) for r in runs}):
        primary = _primary(results, key[2])
        scores, steps, counts = [], [], []
        for r in (r for r in runs if (r["model"], group_name(r), r["task"]) == key):
            elapsed = list(itertools.accumulate(r["timing"]["step_s"]))
            reached = [(step, value) for step, value in _points(r, f"val_{primary}")
                       if 0 < step <= len(elapsed) and elapsed[step - 1] <= seconds]
            counts.append(len(elapsed))
            if reached:
                steps.append(reached[-1][0])
                scores.append(reached[-1][1])
        value = _fmt(scores, error=error) if scores else "-"
        rows.append([*key, value, "/".join(map(str, sorted(set(steps)))) or "-",
                     "/".join(map(str, sorted(set(counts)))), str(len(scores))])
    return header, rows


def _primary(results, task: str) -> str:
    return next(r["protocol"]["primary_metric"] for r in results if r["task"] == task)


def _points(result: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """(step, value) of a training-curve field, or of a validation metric for ``val_<metric>`` (e.g.
    ``val_accuracy``: the held-out learning curve recorded every ``eval.every`` steps)."""
    training = result.get("training") or {}
    if key.startswith("val_"):
        metric, out = key[4:], []
        for v in training.get("validation") or []:
            row = next(iter((v.get("metrics") or {}).values()), {})
            if metric in row:
                out.append((v["step"], row[metric]))
        return out
    return [(p["step"], p[key]) for p in training.get("curve") or [] if key in p]


def validation_mean(result: dict[str, Any], metric: str = "accuracy") -> float | None:
    """Mean of a run's periodic validation scores of ``metric``: the level of its held-out learning
    curve (steadier than its best single evaluation); None without validation during training."""
    values = [v for _, v in _points(result, f"val_{metric}")]
    return statistics.fmean(values) if values else None


def curves(results: list[dict[str, Any]], key: str = "reward", smooth: int = 1,
           error: str = "std") -> dict[str, dict[str, dict[str, list[float]]]]:
    """Training curves of ``key`` (a field of each step's metrics) per task and per model + algorithm
    (+ label): ``{task: {name: {"step", "mean", "err", "n"}}}``, each seed's curve first smoothed by a
    trailing moving average of ``smooth`` steps, then averaged over the seeds that reached each step."""
    if smooth < 1:
        raise UsageError(f"--smooth must be at least 1, got {smooth}")
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    groups: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
    for r in results:
        points = _points(r, key)
        if not points:
            continue
        ys = [y for _, y in points]
        smoothed = [statistics.fmean(ys[max(0, i - smooth + 1): i + 1]) for i in range(len(ys))]
        name = f"{r['model']} + {group_name(r)}"
        groups.setdefault((r["task"], name), []).append([(s, y) for (s, _), y in zip(points, smoothed)])
    for (task, name), seeds in sorted(groups.items()):
        by_step: dict[int, list[float]] = {}
        for seed in seeds:
            for step, y in seed:
                by_step.setdefault(step, []).append(y)
        steps = sorted(by_step)
        out.setdefault(task, {})[name] = {
            "step": [float(s) for s in steps], "mean": [statistics.fmean(by_step[s]) for s in steps],
            "err": [spread(by_step[s], error) for s in steps], "n": [float(len(by_step[s])) for s in steps]}
    return out


def without_seconds(metrics: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Metrics per length minus wall-clock seconds (kept apart so results files are reproducible)."""
    if metrics is None:
        return None
    return {k: {m: v for m, v in row.items() if m != "seconds"} for k, row in metrics.items()}

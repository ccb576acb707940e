"""Pick each setting's learning rate on the validation split: for every seed-0 run in the given folders,
the mean validation accuracy over its periodic evaluations; prints one row per (setting, learning rate)
and the best rate per setting. A setting is task + algorithm + the run's label without its ``lr...``
part (``tok-mu8-lr1e-6`` -> ``tok-mu8``), so variants that differ in more than the rate are chosen
separately. A choice at the lowest or highest rate tried is flagged: the best rate may lie beyond the
grid. Test scores are never read."""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dllm_rl.errors import UsageError  # noqa: E402
from dllm_rl.results import load_results, validation_mean  # noqa: E402

_LR_PART = re.compile(r"(?:^|-)lr\d[\d.]*(?:e-?\d+)?(?=-|$)")


def setting_of(label: str) -> str:
    """The label without its learning-rate part: ``mu8-lr1e-6`` -> ``mu8``, ``lr1e-5`` -> ``""``."""
    return _LR_PART.sub("", label).strip("-")


def rate_table(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[float, float]]:
    """``{(task, algorithm, setting): {lr: mean validation accuracy over the seed-0 runs}}``."""
    levels: dict[tuple[str, str, str], dict[float, list[float]]] = {}
    for r in results:
        level = validation_mean(r)
        if level is not None and r["seed"] == 0:
            key = (r["task"], r["algorithm"], setting_of(r.get("label") or ""))
            levels.setdefault(key, {}).setdefault(r["config"]["optim"]["lr"], []).append(level)
    return {key: {lr: statistics.fmean(v) for lr, v in by_lr.items()} for key, by_lr in levels.items()}


def choice_note(by_lr: dict[float, float]) -> str:
    """The best rate of one setting, and whether it is the only rate tried or at an edge of those tried."""
    best = max(by_lr, key=by_lr.get)
    if len(by_lr) == 1:
        return f"lr {best:.0e} (the only rate tried)"
    if best in (min(by_lr), max(by_lr)):
        side = "lowest" if best == min(by_lr) else "highest"
        return f"lr {best:.0e} (the {side} rate tried: the best may lie beyond it)"
    return f"lr {best:.0e}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="RESULTS_DIR", help="e.g. results/algorithms")
    args = parser.parse_args(argv)
    try:
        results = [r for folder in args.folders for r in load_results(folder)]
    except UsageError as e:
        parser.exit(2, f"error: {e}\n")
    for (task, algo, setting), by_lr in sorted(rate_table(results).items()):
        name = f"{algo} [{setting}]" if setting else algo
        for lr, level in sorted(by_lr.items()):
            print(f"{task:12s} {name:20s} lr {lr:.0e}  mean validation accuracy {100 * level:5.1f}")
        print(f"{task:12s} {name:20s} -> {choice_note(by_lr)}")


if __name__ == "__main__":
    main(sys.argv[1:])

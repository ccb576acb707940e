"""Pick each setting's learning rate on the validation split: for every seed-0 run in the given folders,
the mean validation accuracy over its periodic evaluations; prints one row per (setting, learning rate)
and the best rate per setting. A setting is task + algorithm + the run's label without its ``lr...``
part (``tok-mu8-lr1e-6`` -> ``tok-mu8``), so variants that differ in more than the rate are chosen
separately. Test scores are never read."""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python benchmarks/select_lr.py RESULTS_DIR [RESULTS_DIR ...]  (e.g. results/algorithms)")
    results = [r for folder in argv for r in load_results(folder)]
    for (task, algo, setting), by_lr in sorted(rate_table(results).items()):
        name = f"{algo} [{setting}]" if setting else algo
        for lr, level in sorted(by_lr.items()):
            print(f"{task:12s} {name:20s} lr {lr:.0e}  mean validation accuracy {100 * level:5.1f}")
        only = "" if len(by_lr) > 1 else " (the only rate tried)"
        print(f"{task:12s} {name:20s} -> lr {max(by_lr, key=by_lr.get):.0e}{only}")


if __name__ == "__main__":
    main(sys.argv[1:])

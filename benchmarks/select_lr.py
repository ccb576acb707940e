"""Pick each algorithm's learning rate on the validation split: for every run in the given folders
(one task, seed 0), the mean validation accuracy over its periodic evaluations; prints one row per
(algorithm, learning rate) and the best rate per algorithm. Test scores are never read."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dllm_rl.results import load_results, validation_mean  # noqa: E402


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python benchmarks/select_lr.py RESULTS_DIR [RESULTS_DIR ...]  (e.g. results/algorithms)")
    table: dict[tuple[str, str], dict[float, list[float]]] = {}
    for folder in argv:
        for r in load_results(folder):
            level = validation_mean(r)
            label = r.get("label") or ""
            if level is not None and r["seed"] == 0 and (not label or label.startswith("lr")):  # other variants differ in more than lr
                table.setdefault((r["task"], r["algorithm"]), {}).setdefault(r["config"]["optim"]["lr"], []).append(level)
    for (task, algo), by_lr in sorted(table.items()):
        for lr, levels in sorted(by_lr.items()):
            print(f"{task:10s} {algo:12s} lr {lr:.0e}  mean validation accuracy {100 * statistics.fmean(levels):5.1f}")
        best = max(by_lr, key=lambda lr: statistics.fmean(by_lr[lr]))
        print(f"{task:10s} {algo:12s} -> lr {best:.0e}")


if __name__ == "__main__":
    main(sys.argv[1:])

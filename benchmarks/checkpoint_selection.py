"""Which checkpoint to score: for runs that validated often and kept every validated checkpoint
(``output.checkpoint_every`` = ``eval.every``, ``output.keep_checkpoints=0``), score on test the
checkpoint each selection rule picks from the validation curve alone: the best (first of the best,
as the trainer picks) among evaluations every K steps up to step S, or the last one at step S.
Test never enters a choice. Checks that the rule the runs themselves used reproduces their results
files. Writes results/benchmarks/<out>.json and prints a markdown table (mean ± sample std over seeds).

    python benchmarks/checkpoint_selection.py results/countdown-240 --run-dir runs/countdown-240
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_json  # noqa: E402
from dllm_rl import checkpoint as ckpt  # noqa: E402
from dllm_rl.config import RunConfig, from_dict  # noqa: E402
from dllm_rl.evaluation import evaluate  # noqa: E402
from dllm_rl.pipeline import build_task, load_model  # noqa: E402


def parse_rule(text: str) -> tuple[str, int, int]:
    """``best:K:S`` (best validation among steps K, 2K, ... <= S) or ``last:S``."""
    parts = text.split(":")
    if parts[0] == "best" and len(parts) == 3:
        return "best", int(parts[1]), int(parts[2])
    if parts[0] == "last" and len(parts) == 2:
        return "last", 0, int(parts[1])
    raise SystemExit(f"bad rule {text!r}; valid: best:K:S or last:S (e.g. best:20:120, last:240)")


def pick(validation: list[tuple[int, float]], rule: tuple[str, int, int]) -> int:
    """The step a rule selects, from (step, validation accuracy) pairs in step order."""
    kind, every, upto = rule
    if kind == "last":
        return upto
    candidates = [(step, v) for step, v in validation if step % every == 0 and step <= upto]
    if not candidates:
        raise SystemExit(f"no validation every {every} steps up to {upto}")
    best = max(v for _, v in candidates)
    return next(step for step, v in candidates if v == best)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="folder of results files of the runs")
    p.add_argument("--run-dir", required=True, help="their run folders (the grid's run_dir)")
    p.add_argument("--rule", action="append", default=[], help="best:K:S or last:S (repeatable)")
    p.add_argument("--metric", default=None, help="test metric to report (default: the task's primary metric, "
                   "which the rules select on)")
    p.add_argument("--out", default=None, help="name of the JSON file in results/benchmarks/")
    a = p.parse_args(argv)
    names = a.rule or ["best:20:120", "best:10:120", "last:120", "best:20:240", "best:10:240", "last:240"]
    rules = {name: parse_rule(name) for name in names}
    files = sorted(Path(a.results).glob("*.json"))
    if not files:
        raise SystemExit(f"no results files in {a.results!r}")
    per_rule: dict[str, list[float]] = {name: [] for name in rules}
    runs, base_scores, adapter = [], [], None
    for f in files:
        result = json.loads(f.read_text())
        run = from_dict(RunConfig, result["config"])
        task = build_task(run)
        if adapter is None:
            adapter = load_model(run, task)
            base_state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        length = result["protocol"]["lengths"][0]
        key, primary = str(length), result["protocol"]["primary_metric"]
        metric = a.metric or primary
        validation = [(v["step"], v["metrics"][key][primary]) for v in result["training"]["validation"]]
        run_dir = Path(a.run_dir) / f.stem
        scores: dict[int, float] = {}

        def test_at(step: int) -> float:
            if step not in scores:
                folder = ckpt.step_dir(run_dir, step)
                if not folder.is_dir():
                    raise SystemExit(f"no checkpoint {str(folder)!r}: the runs need output.checkpoint_every equal to "
                                     "eval.every and output.keep_checkpoints=0")
                adapter.model.load_state_dict(base_state)
                ckpt.load_policy(adapter.model, folder)
                m = evaluate(adapter, task, run.eval.split, [length], run.eval.batch_size, run.eval.max_examples, run)
                scores[step] = m[key][metric]
            return scores[step]

        base_score = result["base"][key][metric] if result["base"] else None
        row = {"file": f.name, "seed": result["seed"], "base": base_score, "rules": {}}
        if base_score is not None:
            base_scores.append(base_score)
        for name, rule in rules.items():
            step = pick(validation, rule)
            row["rules"][name] = {"step": step, "test": test_at(step)}
            per_rule[name].append(test_at(step))
        own = ("best", run.eval.every, run.optim.max_steps) if run.eval.select == "best" else ("last", 0, run.optim.max_steps)
        own_step = pick(validation, own)
        if abs(test_at(own_step) - result["metrics"][key][metric]) > 1e-9:
            raise SystemExit(f"{f.name}: step {own_step} scores {test_at(own_step)} on test, the results file "
                             f"{result['metrics'][key][metric]}: these are not the runs' checkpoints")
        runs.append(row)
        print(f.name, {n: (r["step"], round(100 * r["test"], 1)) for n, r in row["rules"].items()}, flush=True)
    base = statistics.mean(base_scores) if base_scores else None
    print(f"\n| rule | steps chosen | test {metric} per seed | mean ± std | vs base "
          f"{'-' if base is None else f'{100 * base:.1f}'} |\n|---|---|---|---|---|")
    summary = {}
    for name, values in per_rule.items():
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        steps = [r["rules"][name]["step"] for r in runs]
        delta = None if base is None else mean - base
        summary[name] = {"mean": mean, "std": std, "delta": delta, "steps": steps, "test": values}
        print(f"| {name} | {', '.join(map(str, steps))} | {', '.join(f'{100 * v:.1f}' for v in values)} | "
              f"{100 * mean:.1f} ± {100 * std:.1f} | {'-' if delta is None else f'{100 * delta:+.1f}'} |")
    write_json(a.out or f"checkpoint_selection_{Path(a.results).name}",
               {"machine": machine(), "results": a.results, "metric": metric, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()

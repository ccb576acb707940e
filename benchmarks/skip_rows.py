"""Step time of the main job's Sudoku ESPO preset with and without skipping the rows that carry no gradient
(``optim.skip_zero_rows``): real ``dllm-rl train`` runs on the cached tiny base, the first steps
dropped as warm-up; update time = step time minus rollout time, from each run's metrics.jsonl.

  python benchmarks/skip_rows.py [--steps 20] [--out skip_rows]     # -> results/benchmarks/skip_rows.json"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, md_table, write_json  # noqa: E402


def measure(skip: bool, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dllm_rl.cli", "train", "--algo", "espo", "--task", "sudoku",
               "--set", f"optim.max_steps={steps}", "--set", f"optim.skip_zero_rows={str(skip).lower()}",
               "--results-dir", str(Path(tmp) / "results"), "--run-dir", str(Path(tmp) / "runs")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        log = next(Path(tmp, "runs").glob("*/metrics.jsonl"))
        rows = [json.loads(line) for line in log.read_text().splitlines()][warmup:]
    step = sum(r["seconds"] for r in rows) / len(rows)
    rollout = sum(r["rollout_seconds"] for r in rows) / len(rows)
    return {"skip_zero_rows": skip, "steps_timed": len(rows), "step_s": round(step, 3),
            "rollout_s": round(rollout, 3), "update_s": round(step - rollout, 3),
            "reward": round(sum(r["reward"] for r in rows) / len(rows), 4)}


def section(d: dict) -> str:
    """The BENCHMARKS.md section for a skip_rows.json."""
    on, off = d["runs"]
    return (f"## Skipping rows with no gradient (the main job's Sudoku preset)\n\n"
            f"`python benchmarks/skip_rows.py` ({d['machine']['date'][:10]}): the main job's Sudoku ESPO preset (32 prompts x 8, "
            f"positives only, no KL term) for {on['steps_timed'] + d['warmup']} steps, the first {d['warmup']} dropped, with `optim.skip_zero_rows` on "
            "(default) and off. Without a KL term a row with zero advantage adds exactly zero to the loss, so its "
            "ELBO passes are skipped; the update is the same up to float rounding (`tests/trainer/test_skip_rows.py`).\n\n"
            + md_table(["skip_zero_rows", "step s", "rollout s", "update s"],
                       [["on" if r["skip_zero_rows"] else "off", r["step_s"], r["rollout_s"], r["update_s"]] for r in (on, off)])
            + f"\n\nThe update is {d['update_speedup']}x faster and the step {d['step_speedup']}x; the rollout is now most "
            "of a step. The two rollouts are the same computation (up to the float rounding of the updates), so their times differ by the machine's noise.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="skip_rows")
    args = ap.parse_args()
    runs = [measure(skip, args.steps, args.warmup) for skip in (True, False)]
    data = {"machine": machine(), "preset": "the main job's Sudoku ESPO preset (tiny, 32 prompts x 8, no KL term)",
            "warmup": args.warmup, "runs": runs, "update_speedup": round(runs[1]["update_s"] / runs[0]["update_s"], 2),
            "step_speedup": round(runs[1]["step_s"] / runs[0]["step_s"], 2)}
    path = write_json(args.out, data)
    print(section(data))
    print(f"-> {path}")


if __name__ == "__main__":
    main()

"""How much of a tiny model's greedy accuracy the evaluation protocol's parallel decoding costs: the
same model decoded with L/2 steps (two tokens committed per step, the protocol) and with L steps
(one token per step), under low-confidence and margin remasking; on Countdown also what kind of
wrong answer each is (no expression, wrong numbers, right numbers but wrong value). Scores the cached base checkpoint
and any trained folders given with ``--checkpoint`` (e.g. runs/<run>/final); writes
results/benchmarks/<out>.json. Set DLLM_RL_CACHE to reuse cached base models."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_json  # noqa: E402
from benchmarks.threshold_accuracy import evaluate  # noqa: E402
from dllm_rl.diffusion.sampler import SamplerConfig  # noqa: E402
from dllm_rl.models.tiny import TinyDLM  # noqa: E402
from dllm_rl.pipeline import build_task, load_model, resolve_config  # noqa: E402
from dllm_rl.tasks.countdown import verdict  # noqa: E402


def countdown_breakdown(task, examples, texts, style: str) -> dict[str, int]:
    """How many answers are solved and how many fail each way (``tasks.countdown.verdict``)."""
    counts = dict.fromkeys(("solved", "no_expression", "wrong_numbers", "wrong_value"), 0)
    for ex, text in zip(examples, texts):
        counts[verdict(ex, task.answer(text, style))] += 1
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sudoku")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", action="append", default=[], help="trained tiny model folder (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="run setting, repeatable")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="decoding_steps", help="name of the JSON file in results/benchmarks/")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    run = resolve_config(algo="espo", task=a.task, model="tiny", sets=tuple(a.sets))
    task = build_task(run)
    adapter = load_model(run, task)
    length = task.protocol(adapter.prompt_style).lengths[0]
    rows = []
    for name in ["base", *a.checkpoint]:
        if name != "base":
            adapter.model.load_state_dict(TinyDLM.from_pretrained(name).state_dict())
        adapter.model.eval()
        for steps in (length // 2, length):
            for remasking in ("low_confidence", "margin"):
                cfg = SamplerConfig(gen_length=length, steps=steps, block_length=run.rollout.block_length,
                                    temperature=0.0, remasking=remasking)
                r = evaluate(adapter, task, a.split, cfg, a.batch_size, None)
                row = {"model": name, "steps": steps, "gen_length": length, "remasking": remasking,
                       r["metric"]: r["accuracy"], "n": r["n"]}
                if a.task == "countdown":
                    row["answers"] = countdown_breakdown(task, task.examples(a.split), r["texts"], adapter.prompt_style)
                rows.append(row)
                print(f"{name[-48:]:48s} steps {steps:3d} {remasking:15s} {r['metric']} {100 * r['accuracy']:5.1f}",
                      row.get("answers", ""), flush=True)
    write_json(a.out, {"machine": machine(), "task": a.task, "split": a.split, "rows": rows})


if __name__ == "__main__":
    main()

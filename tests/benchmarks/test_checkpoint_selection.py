"""Scoring the checkpoint a selection rule picks on validation (benchmarks/checkpoint_selection.py)."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "checkpoint_selection", Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoint_selection.py")
selection = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(selection)

CURVE = [(10, 0.2), (20, 0.5), (30, 0.3), (40, 0.5), (50, 0.6), (60, 0.1)]


@pytest.mark.parametrize("rule, step", [
    ("best:10:60", 50), ("best:10:40", 20),  # the first of equal bests, as the trainer keeps it
    ("best:20:60", 20), ("best:30:60", 30),  # only every K-th evaluation is a candidate
    ("last:40", 40),
])
def test_a_rule_picks_from_validation_alone(rule, step):
    assert selection.pick(CURVE, selection.parse_rule(rule)) == step


@pytest.mark.parametrize("rule", ["best:10", "first:10", "last"])
def test_a_malformed_rule_is_one_line(rule):
    with pytest.raises(SystemExit, match="valid: best:K:S or last:S"):
        selection.parse_rule(rule)


SMALL = ["pretrain.steps=120", "pretrain.hidden_size=64", "pretrain.num_layers=2", "pretrain.intermediate_size=128",
         "optim.max_steps=3", "rollout.num_prompts=4", "rollout.group_size=4", "eval.max_examples=8",
         "eval.batch_size=8", "task.reward=cells", "algorithm.negative_weight=1", "optim.warmup_steps=0", "optim.lr=1e-3",
         "eval.every=1", "eval.select=best", "eval.base=false", "output.checkpoint_every=1",
         "output.keep_checkpoints=0", "output.completions=none"]


def test_the_runs_own_rule_reproduces_its_results_file(tmp_path, monkeypatch):
    from dllm_rl.cli import main

    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(selection, "write_json", lambda name, data: (tmp_path / f"{name}.json").write_text(json.dumps(data)))
    results, runs = tmp_path / "results", tmp_path / "runs"
    args = ["run", "--algo", "espo", "--task", "sudoku", "--results-dir", str(results), "--run-dir", str(runs)]
    main([*args, *[x for s in SMALL for x in ("--set", s)]])
    rules = ["--rule", "best:1:3", "--rule", "last:3", "--rule", "last:1", "--metric", "cell_accuracy"]
    selection.main([str(results), "--run-dir", str(runs), *rules, "--out", "sel"])
    out = json.loads((tmp_path / "sel.json").read_text())
    (result_file,) = results.glob("*.json")
    result = json.loads(result_file.read_text())
    chosen = out["runs"][0]["rules"]
    assert chosen["best:1:3"]["step"] == result["training"]["best_validation"]["step"]
    assert chosen["best:1:3"]["test"] == result["metrics"]["24"]["cell_accuracy"]
    assert chosen["last:1"]["test"] != chosen["last:3"]["test"]  # the checkpoints differ, so the check can fail

    result["metrics"]["24"]["cell_accuracy"] += 0.125  # a results file that is not these checkpoints' is refused
    result_file.write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="these are not the runs' checkpoints"):
        selection.main([str(results), "--run-dir", str(runs), *rules, "--out", "sel"])

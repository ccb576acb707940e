"""`dllm-rl run --task data:FILE` end to end on the tiny model: the fixture's two-digit additions with a
reward function from a module of the user's, the results file's records, `compare` on its folder, and
the user's mistakes as one line with exit code 2."""
import hashlib
import json
from pathlib import Path

import pytest

ADDITION = Path(__file__).parents[1] / "fixtures" / "data" / "addition.jsonl"
TINY = [f"--set={s}" for s in (
    "pretrain.steps=40", "pretrain.warmup=5", "pretrain.batch_size=16", "pretrain.hidden_size=64", "pretrain.num_layers=2",
    "pretrain.intermediate_size=128", "optim.max_steps=2", "rollout.num_prompts=4", "rollout.group_size=2",
    "eval.max_examples=8", "algorithm.mu=1")]
REWARDS = "def short(example, completion):\n    return 1.0 if len(completion.strip()) <= len(example['answer']) else 0.0\n"


def test_run_on_a_data_file_with_a_reward_module_then_compare(tmp_path, monkeypatch, run_main):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "results"
    code, _, err = run_main(["run", "--task", f"data:{ADDITION}", "--results-dir", str(results), "--run-dir",
                             str(tmp_path / "runs"), "--set", "task.rewards=[exact_match,my_rewards:short]",
                             "--set", "task.reward_weights=[1.0,0.5]", *TINY])
    assert code == 0, err
    (path,) = results.glob("*.json")
    result = json.loads(path.read_text())
    assert result["task"].startswith("data:addition@") and path.name.startswith("tiny__data_addition_")
    config = result["task_config"]
    assert config["files"] == {str(ADDITION): hashlib.sha256(ADDITION.read_bytes()).hexdigest()}
    assert config["mapping"] == {"prompt": "question", "answer": "answer", "id": "id"}
    assert config["template"] == "{prompt}"
    short = config["reward_functions"][1]
    assert short["target"] == "my_rewards:short" and short["weight"] == 0.5
    assert short["sha256"] == hashlib.sha256(REWARDS.encode()).hexdigest()
    assert result["protocol"]["primary_metric"] == "exact_match" and "question" in result["protocol"]["prompt"]
    assert result["metrics"]["8"]["n"] == 8 and 0.0 <= result["metrics"]["8"]["exact_match"] <= 1.0
    assert result["training"]["steps"] == 2
    assert all(0.0 <= row["reward"] <= 1.5 for row in result["training"]["curve"])

    code, out, _ = run_main(["compare", str(results), "--format", "csv"])
    assert code == 0
    assert result["task"] in out and "espo" in out  # the data set's own column (or rows), named by content


def test_a_failing_reward_stops_the_run_with_one_line(tmp_path, monkeypatch, run_main):
    (tmp_path / "bad_rewards.py").write_text("def strict(example, completion):\n    return float(int(completion) == 0)\n")
    code, _, err = run_main(["run", "--task", f"data:{ADDITION}", "--results-dir", str(tmp_path / "results"),
                             "--run-dir", str(tmp_path / "runs"), "--set", f"task.rewards={tmp_path}/bad_rewards.py:strict",
                             "--set", "eval.base=false", "--set", "pretrain.steps=5", *TINY[1:]])
    assert code == 2
    assert "bad_rewards.py:strict failed on example 'add-" in err and "ValueError" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("sets, needle", [
    (["task.prompt_field=questoin"], "task.prompt_field='questoin'"),
    (["task.rewards=[exact_match,numeric_mach]"], "Did you mean 'numeric_match'"),
    (["task.rewards=no_such_module_xyz:f"], "cannot be imported"),
    (["task.template={questoin}"], "no field 'questoin'"),
])
def test_bad_data_settings_are_one_line_before_any_model(sets, needle, run_main):
    code, _, err = run_main(["run", "--task", f"data:{ADDITION}", *[f"--set={s}" for s in sets]])
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_data_file_is_one_line(run_main):
    code, _, err = run_main(["evaluate", "--task", "data:/nonexistent/qa.jsonl"])
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1

"""ESPO on a code reward through `dllm-rl run`: the tiny model writes programs, the sandbox judges them
inside the training loop. Scores stay near zero; the point is the pipeline and the sandbox."""
import json

import pytest

from dllm_rl.cli import main
from dllm_rl.sandbox import runner


def _acecoder_file(path):
    """Eight AceCode-87K-schema rows with one-line answers a briefly pretrained tiny model can reproduce."""
    with open(path, "w") as fh:
        for i in range(8):
            question = f"Write f() returning {i}."
            fh.write(json.dumps({
                "id": f"tiny_{i}", "source": "oss", "question": question, "test_cases": [f"assert f() == {i}"],
                "inferences": [{"model_name": "m", "completion_id": 0, "completion": f"def f():return {i}", "pass_rate": 1.0}],
                "context_messages": [{"content": question, "role": "user"}]}) + "\n")


def test_espo_trains_on_sandboxed_code_reward(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "acecoder.jsonl"
    _acecoder_file(data)
    verdicts = []
    run = runner.Sandbox.run
    monkeypatch.setattr(runner.Sandbox, "run", lambda self, job, limits=None: verdicts.append(run(self, job, limits)) or verdicts[-1])
    sets = ["task.subset=all", "task.validation_size=1", "task.test_size=1", f"task.data_path={data}",
            "pretrain.steps=160", "pretrain.warmup=5", "pretrain.lr=3e-3", "pretrain.batch_size=16",
            "pretrain.hidden_size=64", "pretrain.num_layers=2", "pretrain.intermediate_size=128",
            "optim.max_steps=2", "rollout.num_prompts=2", "rollout.group_size=2", "rollout.gen_length=32",
            "eval.lengths=[32]", "eval.base=false", "algorithm.mu=1"]
    args = ["run", "--task", "acecoder", "--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exc:
        main(args + [x for s in sets for x in ("--set", s)])
        raise SystemExit(0)
    assert exc.value.code == 0
    result = json.loads((tmp_path / "results" / "tiny__acecoder__espo__seed0.json").read_text())
    assert result["training"]["steps"] == 2 and result["protocol"]["primary_metric"] == "pass@1"
    assert set(result["metrics"]["32"]) >= {"pass@1", "test_pass_rate"}
    rewards = [row["reward"] for row in result["training"]["curve"]]
    assert all(0.0 <= r <= 2.5 for r in rewards)
    assert verdicts and all(v.completed for v in verdicts)  # programs ran in the sandbox, under the trainer

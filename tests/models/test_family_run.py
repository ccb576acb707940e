"""`dllm-rl run` with ESPO for two steps on tiny random LLaDA and Dream checkpoints (LoRA, as the
family presets set it), then the trained adapter evaluated with `evaluate --adapter` and merged with
`merge`. The tiny checkpoint folder is passed as --model; its config.json picks the family.
(Gradient checkpointing, on in the family presets, is covered in test_native_models.)"""
import json

import pytest

from dllm_rl.cli import main

SMALL = ["--set", "optim.max_steps=2", "--set", "rollout.num_prompts=2", "--set", "rollout.group_size=2",
         "--set", "rollout.gen_length=8", "--set", "rollout.block_length=8", "--set", "rollout.steps=4",
         "--set", "algorithm.mu=1", "--set", "algorithm.num_mc=1", "--set", "eval.lengths=[8]",
         "--set", "eval.max_examples=2", "--set", "eval.base=false", "--set", "model.gradient_checkpointing=false", "--set", "optim.micro_batch_size=4",
         "--set", "model.lora_r=4", "--set", "optim.lr=1e-3", "--set", "task.train_size=20",
         "--set", "task.test_size=4", "--set", "task.validation_size=4"]


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_espo_two_steps_then_evaluate_and_merge_the_adapter(family, checkpoints, tmp_path, capsys):
    folder = str(checkpoints[family])
    code, out, err = run_main(["run", "--algo", "espo", "--task", "countdown", "--model", folder,
                               "--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"), *SMALL], capsys)
    assert code == 0, err
    (result_file,) = (tmp_path / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["config"]["model"]["lora"] and result["protocol"]["style"] == "chat"
    curve = result["training"]["curve"]
    assert result["training"]["steps"] == 2 and len(curve) == 2
    assert all(abs(row["loss"]) < 1e3 and row["grad_norm"] >= 0 and 0 <= row["reward"] <= 1 for row in curve)
    assert result["metrics"]["8"]["n"] == 2
    (final,) = (tmp_path / "runs").glob("*/final")
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    if family == "dream":  # the CLI paths below are family-independent: here, --checkpoint of a LoRA run
        code, out, err = run_main(["evaluate", "--model", folder, "--checkpoint", str(final), "--task", "countdown",
                                   "--lengths", "8", "--set", "eval.max_examples=2", "--set", "task.train_size=20",
                                   "--set", "task.test_size=4", "--set", "task.validation_size=4"], capsys)
        assert code == 0, err
        return

    code, out, err = run_main(["evaluate", "--model", folder, "--adapter", str(final), "--task", "countdown",
                               "--lengths", "8", "--set", "eval.max_examples=2", "--set", "task.train_size=20",
                               "--set", "task.test_size=4", "--set", "task.validation_size=4"], capsys)
    assert code == 0, err
    code, out, err = run_main(["merge", "--model", folder, "--adapter", str(final), "--out", str(tmp_path / "merged")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == {"llada": "llada", "dream": "Dream"}[family]

"""Every configuration value is validated when the config is built: a bad value is one line naming the
key, the value and what is valid, exit 2, before any model is loaded or any folder created."""
import contextlib
import io

import pytest

from dllm_rl.cli import main

BAD = [  # (--set values, words the one line must contain)
    (["rollout.num_prompts=0"], ["num_prompts", "at least 1", "0"]),
    (["rollout.group_size=1"], ["group_size", "at least 2"]),
    (["rollout.group_size=-4"], ["group_size"]),
    (["optim.micro_batch_size=0"], ["micro_batch_size", "at least 1"]),
    (["eval.batch_size=0"], ["batch_size", "at least 1"]),
    (["rollout.steps=0"], ["steps", "at least 1"]),
    (["rollout.block_length=0"], ["block_length", "at least 1"]),
    (["rollout.gen_length=64", "rollout.block_length=8", "rollout.steps=4"], ["steps (4)", "blocks", "(8)"]),
    (["optim.max_steps=0"], ["max_steps", "at least 1"]),
    (["optim.max_steps=-3"], ["max_steps", "-3"]),
    (["pretrain.steps=0"], ["pretrain", "steps", "at least 1"]),
    (["pretrain.num_heads=3"], ["hidden_size", "num_heads"]),
    (["rollout.temperature=-1"], ["temperature", ">= 0"]),
    (["optim.lr=0"], ["lr", "greater than 0"]),
    (["optim.grad_clip=-1"], ["grad_clip"]),
    (["optim.beta2=1.0"], ["beta2", "[0, 1)"]),
    (["model.lora_dropout=1.5"], ["lora_dropout", "[0, 1)"]),
    (["model.lora_r=0"], ["lora_r"]),
    (["model.dtype=fp8"], ["dtype", "bfloat16"]),
    (["model.prompt_style=verbose"], ["prompt_style", "direct or chat"]),
    (["eval.lengths=[]"], ["lengths"]),
    (["eval.lengths=[0]"], ["lengths"]),
    (["eval.max_examples=0"], ["max_examples"]),
    (["eval.every=-1"], ["every"]),
    (["rollout.remasking=confidence"], ["remasking", "low_confidence"]),
    (["rollout.batch_size=0"], ["batch_size"]),
]


@pytest.mark.parametrize("sets, words", BAD, ids=[" ".join(s) for s, _ in BAD])
def test_bad_value_is_one_line_and_exit_2_before_any_work(sets, words, tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    args = ["run", "--algo", "espo", "--task", "sudoku", "--results-dir", str(tmp_path / "results"),
            "--run-dir", str(tmp_path / "runs")]
    for s in sets:
        args += ["--set", s]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(args)
    lines = err.getvalue().strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err.getvalue()
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not any((tmp_path / d).exists() for d in ("cache", "results", "runs"))  # nothing built or written

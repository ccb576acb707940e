"""Two accelerate processes (gloo on CPU) give the run of one process: same curve, validation,
checkpoints, completions, scores and final weights, up to float summation order."""
import json
from pathlib import Path

import pytest
import torch

from dllm_rl.distributed import combine_eval, my_prompts, shard_batch_size
from dllm_rl.errors import UsageError

CONFIGS = Path(__file__).resolve().parents[2] / "dllm_rl" / "accelerate_configs"


def _child(argv):
    """One process of ``accelerate.debug_launcher``: fresh accelerate state, then the real CLI."""
    from accelerate.state import AcceleratorState, GradientState

    from dllm_rl.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a one-process parent
    GradientState._reset_state()
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"dllm-rl exited with {exc.code}") from None


def _completions(run_dir):
    path = run_dir / "completions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path, tiny, h):
    from accelerate import debug_launcher

    args = ["run", *tiny, "--set", "eval.every=1", "--set", "output.checkpoint_every=1", "--set", "eval.select=best"]
    code, err = h.cli([*args, *h.dirs(tmp_path, "one")])
    assert code == 0, err
    debug_launcher(_child, args=([*args, *h.dirs(tmp_path, "two")],), num_processes=2)

    one, two = h.result_of(tmp_path, "one"), h.result_of(tmp_path, "two")
    assert one["training"]["steps"] == 2 and len(two["training"]["curve"]) == 2
    assert min(row["reward_std"] for row in one["training"]["curve"]) > 0  # advantages carry signal
    assert one["training"]["curve"][-1]["kl"] > 0  # the policy has moved
    h.close({k: v for k, v in one.items() if k not in ("timing", "config")},
            {k: v for k, v in two.items() if k not in ("timing", "config")})
    # the same samples, rewards and advantages, logged once per prompt group in global order
    assert _completions(h.run_dir_of(tmp_path, "one")) == _completions(h.run_dir_of(tmp_path, "two"))
    # the same weights after training and in the best-validation checkpoint
    for folder in ("final", "checkpoints/best", "checkpoints/step-000002"):
        diff = h.max_weight_diff(h.weights(h.run_dir_of(tmp_path, "one") / folder),
                                 h.weights(h.run_dir_of(tmp_path, "two") / folder))
        assert diff < 1e-5, folder
    start = torch.load(h.run_dir_of(tmp_path, "one") / "checkpoints" / "step-000002" / "random_states_0.pkl",
                       weights_only=False)
    assert "torch_manual_seed" in start  # accelerate's RNG states are part of the checkpoint
    assert (h.run_dir_of(tmp_path, "two") / "checkpoints" / "step-000002" / "random_states_1.pkl").is_file()
    env = json.loads((h.run_dir_of(tmp_path, "two") / "environment.json").read_text())
    assert env["num_processes"] == 2

    # checkpoints do not depend on the process count: the 2-process run resumes in one process
    for name in ("one", "two"):
        code, err = h.cli([*args, "--set", "optim.max_steps=3", "--resume", *h.dirs(tmp_path, name)])
        assert code == 0, err
    h.close(h.result_of(tmp_path, "one")["training"], h.result_of(tmp_path, "two")["training"])


def test_skipped_rows_leave_the_logged_curve_independent_of_the_process_count(tmp_path, tiny, h):
    """Positive-only advantages without a KL term: one process skips the rows with no loss term, two
    processes run them in micro-batches of their own that do not count; every logged metric (the
    ELBO included) averages over the same rows either way."""
    from accelerate import debug_launcher

    args = ["run", *tiny, "--set", "algorithm.beta=0", "--set", "algorithm.negative_weight=0", "--set", "eval.base=false",
            "--set", "output.save_model=false"]
    code, err = h.cli([*args, *h.dirs(tmp_path, "one")])
    assert code == 0, err
    debug_launcher(_child, args=([*args, *h.dirs(tmp_path, "two")],), num_processes=2)
    one, two = h.result_of(tmp_path, "one")["training"]["curve"], h.result_of(tmp_path, "two")["training"]["curve"]
    assert any(row["zero_var_frac"] > 0 or row["reward"] < 1 for row in one)  # some rows carry no gradient
    h.close(one, two)


def test_prompt_shards_cover_the_batch_once_and_need_equal_sizes():
    shards = [my_prompts(8, r, 4) for r in range(4)]
    assert shards[1] == [1, 5]
    assert sorted(p for s in shards for p in s) == list(range(8))
    with pytest.raises(UsageError, match=r"num_prompts \(6\) must be a multiple of the number of processes \(4\)"):
        my_prompts(6, 0, 4)


def test_combined_shard_scores_equal_the_whole_split():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # 7 examples, 3 processes take 0::3, 1::3, 2::3
    parts = []
    for r in range(3):
        mine = scores[r::3]
        parts.append({"24": {"accuracy": sum(mine) / len(mine), "cells": 0.5 * sum(mine) / len(mine),
                             "accuracy_stderr": 9.0, "n": len(mine), "nfe": 12, "seconds": 1.0 + r}})
    out = combine_eval(parts, "accuracy")["24"]
    p = sum(scores) / 7
    assert out["accuracy"] == pytest.approx(p) and out["cells"] == pytest.approx(p / 2)
    assert out["accuracy_stderr"] == pytest.approx((p * (1 - p) / 7) ** 0.5)
    assert (out["n"], out["nfe"], out["seconds"]) == (7, 12, 3.0)


@pytest.mark.parametrize("n, world, bs", [(11, 2, 4), (129, 2, 64), (5, 4, 2), (100, 3, 128)])
def test_shard_batch_sizes_give_every_process_the_same_number_of_batches(n, world, bs):
    counts = set()
    for r in range(world):
        mine = len(range(r, n, world))
        size = shard_batch_size(n, world, bs, mine)
        assert size <= max(bs, 1)
        counts.add(-(-mine // size))
    assert len(counts) == 1


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp.yaml", "MULTI_GPU", {}),
    ("fsdp.yaml", "FSDP", {"fsdp_version": 2}),
    ("zero2.yaml", "DEEPSPEED", {"zero_stage": 2}),
    ("zero3.yaml", "DEEPSPEED", {"zero_stage": 3, "zero3_save_16bit_model": True}),
])
def test_shipped_accelerate_configs_parse_as_the_documented_strategy(name, kind, extra):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type.value == kind
    section = config.fsdp_config if kind == "FSDP" else config.deepspeed_config
    assert extra.items() <= section.items()
    assert name in (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()

"""The RL learning-rate warm-up: linear over the first optimizer steps, then constant."""
import math

from dllm_rl.trainer import warmup_factor


def test_warmup_is_linear_then_constant():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_warmup_is_the_full_rate_from_the_first_step():
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(7, 0) == 1.0


def test_the_trainer_applies_the_warmed_up_rate(tmp_path, tiny, h):
    """Adam's first step moves every weight with a gradient by lr x factor: 1e-3 at the full rate,
    1e-6 at 1/1000 of it, so the two runs' weights differ by almost 1e-3."""
    one_step = [*tiny, "--set", "optim.max_steps=1", "--set", "algorithm.mu=1", "--set", "optim.lr=1e-3",
                "--set", "optim.weight_decay=0", "--set", "eval.base=false"]
    moved = {}
    for name, warmup in (("full", 0), ("warm", 1000)):
        code, err = h.cli(["run", *one_step, "--set", f"optim.warmup_steps={warmup}", *h.dirs(tmp_path, name)])
        assert code == 0, err
        moved[name] = h.weights(h.run_dir_of(tmp_path, name) / "final")
    diff = h.max_weight_diff(moved["full"], moved["warm"])
    assert 5e-4 < diff < 1.1e-3  # the full-rate step moved some weight by about lr; the warm one barely


def test_decay_schedules_start_after_the_warmup_and_end_near_zero():
    from dllm_rl.trainer import lr_factor

    total, warm = 12, 2
    for schedule in ("cosine", "linear"):
        f = [lr_factor(s, total, warm, schedule) for s in range(total)]
        assert f[:2] == [0.5, 1.0]  # the warm-up is unchanged
        assert all(a > b for a, b in zip(f[1:], f[2:]))  # then strictly decreasing
        assert 0 < f[-1] < 0.1  # the last optimizer step still moves the weights
    # linear: 1 - (s - w + 1) / (total - w + 1); cosine: its half-cosine of the same progress
    assert lr_factor(6, total, warm, "linear") == 1 - 5 / 11
    assert abs(lr_factor(6, total, warm, "cosine") - 0.5 * (1 + math.cos(math.pi * 5 / 11))) < 1e-12
    assert [lr_factor(s, total, warm, "constant") for s in range(total)] == [warmup_factor(s, warm) for s in range(total)]

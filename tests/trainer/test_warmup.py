"""The RL learning-rate warm-up: linear over the first optimizer steps, then constant."""
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

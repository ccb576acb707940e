"""AGRPO re-evaluates the sampler's own trajectory step by step, so it refuses rollout settings under
which that trajectory is not the theta-free, sampled one it models: early stop (tokens filled with EOS,
never sampled), a confidence-ordered remasking (positions chosen by theta) and greedy rollouts. The
refusal is one line and exit code 2 from the CLI, before any model is built or trained."""
import contextlib
import io

import pytest

import dllm_rl.pipeline as pipeline
from dllm_rl.cli import main
from dllm_rl.config import RolloutConfig
from dllm_rl.errors import UsageError
from dllm_rl.pipeline import build_algorithm, resolve_config


def cli(args):
    """(exit code, stderr) of ``dllm-rl ARGS`` run in this process."""
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any model load (pretraining the tiny base included) fails the test: the refusal comes first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the rollout settings were checked")

    monkeypatch.setattr(pipeline, "load_model", refuse)
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    return ["--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs")]


@pytest.mark.parametrize("setting, named", [("rollout.early_stop=true", "rollout.early_stop"),
                                            ("rollout.remasking=low_confidence", "rollout.remasking"),
                                            ("rollout.remasking=entropy", "rollout.remasking"),
                                            ("rollout.temperature=0", "rollout.temperature")])
@pytest.mark.parametrize("command", ["run", "train"])
def test_agrpo_refuses_rollouts_it_cannot_re_evaluate(no_work, command, setting, named):
    code, err = cli([command, "--algo", "agrpo", "--task", "sudoku", "--model", "tiny", "--set", setting, *no_work])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "agrpo" in lines[0] and named in lines[0]


def test_the_refusal_names_what_is_valid():
    with pytest.raises(UsageError, match=r"rollout\.early_stop=false"):
        resolve_config("agrpo", "countdown", "tiny", sets=("rollout.early_stop=true",))
    with pytest.raises(UsageError, match=r"rollout\.remasking=random"):
        resolve_config("agrpo", "countdown", "tiny", sets=("rollout.remasking=margin",))


def test_its_preset_and_other_objectives_are_unaffected():
    run = resolve_config("agrpo", "sudoku", "tiny")
    assert run.rollout.remasking == "random" and not run.rollout.early_stop
    assert build_algorithm(run).rollout is run.rollout
    for algo in ("espo", "diffu-grpo", "wd1", "spg", "token-elbo"):
        resolve_config(algo, "sudoku", "tiny", sets=("rollout.early_stop=true", "rollout.remasking=low_confidence"))
    # unit use of the objective (a rollout config set by hand) stays possible
    from dllm_rl.algorithms.agrpo import AGRPO
    AGRPO().rollout = RolloutConfig(temperature=1.0)

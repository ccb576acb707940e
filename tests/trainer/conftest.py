"""Shared setup of the trainer tests: one small pretrained tiny model per session, a tiny run, and
the CLI entry point called in-process (its exit code and one-line errors included)."""
import json

import pytest

from dllm_rl.cli import main

TINY = ["--set", "pretrain.steps=120", "--set", "pretrain.hidden_size=64", "--set", "pretrain.num_layers=2",
        "--set", "pretrain.intermediate_size=128", "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4",
        "--set", "rollout.group_size=4", "--set", "algorithm.mu=2", "--set", "optim.micro_batch_size=4",
        "--set", "eval.max_examples=11", "--set", "eval.batch_size=4",
        "--set", "task.reward=cells", "--set", "algorithm.negative_weight=1", "--set", "optim.lr=5e-5",
        "--set", "optim.warmup_steps=0", "--set", "algorithm.beta=0.01"]
"""A small tiny model, pretrained just enough (120 steps) to solve some blanks: groups have reward
variance, so the policy gradient is not only the KL term. Micro-batches of 4 rows: several per
optimizer step. 11 evaluation examples in batches of 4: uneven shards over two processes. The cell
reward with negatives and the KL term at 5e-5 without warm-up (not the main job's solved-grid,
positives-only, KL-free preset):
with this weak model most groups would otherwise have no solved grid, hence no advantage and no gradient."""


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "dllm_rl_cache"))


def cli(args):
    """(exit code, stderr text) of ``dllm-rl ARGS`` run in this process."""
    import contextlib
    import io

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def dirs(tmp_path, name):
    return ["--results-dir", str(tmp_path / name / "results"), "--run-dir", str(tmp_path / name / "runs")]


RUN = "tiny__sudoku__espo__seed0"


def result_of(tmp_path, name):
    return json.loads((tmp_path / name / "results" / f"{RUN}.json").read_text())


def run_dir_of(tmp_path, name):
    return tmp_path / name / "runs" / RUN


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture
def tiny():
    return list(TINY)


FINISHED = ["--set", "output.checkpoint_every=1", "--set", "eval.base=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run with a checkpoint after each step; tests copy it before damaging it."""
    base = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "dllm_rl_cache"))
        code, err = cli(["run", *TINY, *FINISHED, *dirs(base, "done")])
    assert code == 0, err
    return base / "done"


def close(a, b, rel=1e-4, abs_=1e-6, where=""):
    """Recursive comparison of JSON-like data: numbers within float tolerance, all else equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            close(a[k], b[k], rel, abs_, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, rel, abs_, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=abs_), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def max_weight_diff(a, b):
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def h():
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(FINISHED=FINISHED, cli=cli, dirs=dirs, result_of=result_of, run_dir_of=run_dir_of, weights=weights,
                                 close=close, max_weight_diff=max_weight_diff, RUN=RUN)

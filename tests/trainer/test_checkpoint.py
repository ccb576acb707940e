"""Full-state checkpoints: a run killed with SIGKILL and resumed writes the results file of an
uninterrupted run; interrupted writes never leave a corrupt file; bad checkpoints are one clear error."""
import gzip
import json
import multiprocessing
import os
import shutil
import signal
import time

import pytest

from dllm_rl import checkpoint as ckpt
from dllm_rl.atomic import atomic_write_text
from dllm_rl.results import TIMING_KEYS, write_result

KILL = ["--set", "optim.max_steps=4", "--set", "optim.warmup_steps=6", "--set", "output.checkpoint_every=1", "--set", "output.keep_checkpoints=2",
        "--set", "eval.every=2", "--set", "output.completions=jsonl.gz"]


def _run_cli(argv):
    from dllm_rl.cli import main

    main(argv)


def _without_timing(result):
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def _lines(path, drop=("seconds", "rollout_seconds")):
    """Records of a JSON-lines log without wall-clock fields (also inside the validation row)."""
    strip = lambda d: {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in drop}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return [strip(json.loads(line)) for line in fh]


def test_killed_run_resumes_to_the_same_results_file(tmp_path, tiny, h):
    args = ["run", *tiny, *KILL, *h.dirs(tmp_path, "run")]
    code, err = h.cli(args)  # uninterrupted reference
    assert code == 0, err
    reference = h.result_of(tmp_path, "run")
    run_dir = h.run_dir_of(tmp_path, "run")
    ref_metrics, ref_completions = _lines(run_dir / "metrics.jsonl"), _lines(run_dir / "completions.jsonl.gz")
    shutil.rmtree(tmp_path / "run")

    child = multiprocessing.get_context("fork").Process(target=_run_cli, args=(args,))
    child.start()
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step-000002").is_dir():
        assert child.is_alive() and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "run" / "results").exists() or not any((tmp_path / "run" / "results").iterdir())
    assert max(step for step, _ in ckpt.step_checkpoints(run_dir)) < 4

    code, err = h.cli([*args, "--resume"])
    assert code == 0, err
    resumed = h.result_of(tmp_path, "run")
    assert _without_timing(resumed) == _without_timing(reference)  # bit for bit on CPU
    assert resumed["training"]["best_validation"]["step"] in (2, 4)
    assert _lines(run_dir / "metrics.jsonl") == ref_metrics  # each step logged once
    assert _lines(run_dir / "completions.jsonl.gz") == ref_completions
    assert [step for step, _ in ckpt.step_checkpoints(run_dir)] == [3, 4]  # retention: the last 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary leftovers
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["resumed_from"].endswith(("step-000002", "step-000003"))


def _copy(finished, tmp_path, h):
    """A private copy of the finished run (its run folder moves: output.* may change on resume)."""
    shutil.copytree(finished, tmp_path / "done")
    return h.run_dir_of(tmp_path, "done")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, tiny, h, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path, h)
    before = {p.name: p.stat().st_size for p in (run_dir / "checkpoints" / "step-000002").iterdir()}

    from dllm_rl import trainer as trainer_mod

    def crash(folder):  # the crash comes after accelerate wrote weights, optimizer and RNG states
        assert (folder / "optimizer.bin").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.ckpt, "write_manifest", crash)
    code, _ = h.cli(["run", *tiny, *h.FINISHED, "--set", "optim.max_steps=3", "--resume", *h.dirs(tmp_path, "done")])
    assert code == 130  # interrupted
    assert [s for s, _ in ckpt.step_checkpoints(run_dir)] == [1, 2]  # no step-3 checkpoint, complete or not
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert {p.name: p.stat().st_size for p in (run_dir / "checkpoints" / "step-000002").iterdir()} == before
    assert ckpt.verify(run_dir / "checkpoints" / "step-000002")["step"] == 2


def test_interrupted_results_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results" / "r.json"
    write_result(path, {"schema": "x", "value": 1})

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_result(path, {"schema": "x", "value": 2, "big": "y" * 100_000})
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "results" / "new.json", "{}")
    assert json.loads(path.read_text()) == {"schema": "x", "value": 1}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["r.json"]


def _damage(kind, folder):
    if kind == "truncated weights":
        with open(folder / "model.safetensors", "r+b") as fh:
            fh.truncate(100)
        return "model.safetensors has 100 bytes"
    if kind == "no manifest":
        (folder / "manifest.json").unlink()
        return "no manifest.json"
    if kind == "flipped bytes":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-100:-90] = bytes(10)  # inside a weight tensor: same size, loads fine, wrong numbers
        (folder / "model.safetensors").write_bytes(data)
        return "model.safetensors does not match its checksum"
    if kind == "damaged before sealing":
        size = (folder / "optimizer.bin").stat().st_size
        (folder / "optimizer.bin").write_bytes(b"\0" * size)
        ckpt.write_manifest(folder)  # the manifest agrees: only loading can tell
        return "could not be loaded"
    if kind == "missing file":
        (folder / "random_states_0.pkl").unlink()
        return "missing random_states_0.pkl"
    if kind in ("mistyped step", "mistyped train state"):  # sealed by a valid manifest: only the reader can tell
        state = json.loads((folder / ckpt.STATE_FILE).read_text())
        if kind == "mistyped step":
            state["step"] = "2"
        else:
            state["train_state"]["curve"] = 5
        (folder / ckpt.STATE_FILE).write_text(json.dumps(state))
        ckpt.write_manifest(folder)
        return "fields of the wrong type" if kind == "mistyped step" else "train_state.curve: expected a list"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated weights", "no manifest", "flipped bytes", "damaged before sealing",
                                  "missing file", "mistyped step", "mistyped train state"])
def test_corrupt_checkpoint_is_one_clear_error(tmp_path, tiny, h, finished, kind):
    run_dir = _copy(finished, tmp_path, h)
    needle = _damage(kind, run_dir / "checkpoints" / "step-000002")
    code, err = h.cli(["run", *tiny, *h.FINISHED, "--resume", *h.dirs(tmp_path, "done")])
    assert code == 2 and needle in err and "step-000002" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_checkpoint_changed_config_and_stale_folder_are_one_clear_error(tmp_path, tiny, h, finished):
    code, err = h.cli(["train", *tiny, "--resume", *h.dirs(tmp_path, "none")])
    assert code == 2 and "no checkpoint in" in err and len(err.strip().splitlines()) == 1

    _copy(finished, tmp_path, h)
    code, err = h.cli(["run", *tiny, *h.FINISHED, "--set", "optim.lr=0.1", "--resume", *h.dirs(tmp_path, "done")])
    assert code == 2 and "optim.lr: 5e-05 in the checkpoint, 0.1 now" in err and len(err.strip().splitlines()) == 1

    code, err = h.cli(["run", *tiny, *h.FINISHED, *h.dirs(tmp_path, "done")])
    assert code == 2 and "holds checkpoints of an earlier run: pass --resume" in err


def test_checkpoint_folder_ignores_and_cleans_temporary_leftovers(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / ".step-000009-abcd").mkdir(parents=True)  # a write killed midway
    (run_dir / "checkpoints" / "step-000003").mkdir()
    (run_dir / "checkpoints" / "best").mkdir()
    assert ckpt.latest(run_dir).name == "step-000003"
    ckpt.clean_temporary(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "step-000003"]
    for step in (4, 5, 6):
        (run_dir / "checkpoints" / f"step-{step:06d}").mkdir()
    ckpt.prune(run_dir, keep=2)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "step-000005", "step-000006"]


def test_config_changes_ignore_only_settings_that_do_not_change_the_trajectory():
    saved = {"seed": 0, "optim": {"lr": 1e-4, "max_steps": 10}, "eval": {"every": 0}, "output": {"run_dir": "a"},
             "algorithm": {"name": "espo", "params": {}}}
    now = {"seed": 0, "optim": {"lr": 1e-4, "max_steps": 20}, "eval": {"every": 5}, "output": {"run_dir": "b"},
           "algorithm": {"name": "espo", "params": {"beta": 0.1}}}
    assert ckpt.config_changes(saved, now) == ["algorithm.params.beta: None in the checkpoint, 0.1 now"]


def test_config_changes_take_a_setting_the_checkpoint_predates_as_its_default():
    saved = {"seed": 0, "rollout": {"threshold": None}}
    assert ckpt.config_changes(saved, {"seed": 0, "rollout": {"threshold": None, "prompt_cache": False}}) == []
    assert ckpt.config_changes(saved, {"seed": 0, "rollout": {"threshold": None, "prompt_cache": True}}) == [
        "rollout.prompt_cache: None in the checkpoint, True now"]


def test_disk_full_mid_run_is_one_line_naming_the_intact_checkpoint(tmp_path, tiny, h, finished, monkeypatch):
    """ENOSPC while the step-3 checkpoint is written: one line naming the folder and the intact step-2
    checkpoint; no half-written folder; freeing space and --resume finishes the run."""
    import errno

    run_dir = _copy(finished, tmp_path, h)
    real = ckpt.write_manifest

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(ckpt, "write_manifest", full)
    args = ["run", *tiny, *h.FINISHED, "--set", "optim.max_steps=3", *h.dirs(tmp_path, "done")]
    code, err = h.cli([*args, "--resume"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "step-000003" in err and "no space left" in err and "step-000002" in err and "--resume" in err
    assert [s for s, _ in ckpt.step_checkpoints(run_dir)] == [1, 2]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert ckpt.verify(run_dir / "checkpoints" / "step-000002")["step"] == 2

    monkeypatch.setattr(ckpt, "write_manifest", real)  # space freed
    code, err = h.cli([*args, "--resume"])
    assert code == 0, err
    assert h.result_of(tmp_path, "done")["training"]["steps"] == 3


def test_disk_full_writing_the_results_file_names_the_saved_model(tmp_path, tiny, h, monkeypatch):
    import errno

    from dllm_rl import pipeline

    def full(path, result):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_result", full)
    code, err = h.cli(["run", *tiny, "--set", "eval.base=false", *h.dirs(tmp_path, "full")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no space left" in err and "tiny__sudoku__espo__seed0.json" in err and "final" in err
    assert (h.run_dir_of(tmp_path, "full") / "final" / "config.json").is_file()


def test_too_little_space_for_one_checkpoint_fails_before_training(tmp_path, tiny, h, monkeypatch):
    from collections import namedtuple

    from dllm_rl import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code, err = h.cli(["run", *tiny, *h.dirs(tmp_path, "small")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs about" in err and "free" in err
    assert not (h.run_dir_of(tmp_path, "small") / "metrics.jsonl").exists()  # no step was spent


@pytest.mark.parametrize("victim", ["optimizer.bin", "model.safetensors"])
def test_a_real_file_size_limit_mid_checkpoint_is_one_line(tmp_path, tiny, h, finished, victim, tmp_path_factory):
    """Not a mock: the run is a process whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) lets the
    small files through but not the checkpoint's ``victim``, so torch.save (optimizer) or safetensors
    (weights) fails with its own error type; still one line naming the folder, exit 2."""
    import resource
    import signal
    import subprocess
    import sys

    sizes = {p.name: p.stat().st_size for p in (finished / "runs" / h.RUN / "checkpoints" / "step-000001").iterdir()}
    small = max(size for name, size in sizes.items() if size < sizes["model.safetensors"])
    limit = (sizes["model.safetensors"] + sizes["optimizer.bin"]) // 2 if victim == "optimizer.bin" else \
        (small + sizes["model.safetensors"]) // 2
    assert sizes["optimizer.bin"] > sizes["model.safetensors"] > small

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "DLLM_RL_CACHE": str(tmp_path_factory.getbasetemp() / "dllm_rl_cache")}
    proc = subprocess.run([sys.executable, "-m", "dllm_rl.cli", "run", *tiny, *h.FINISHED, *h.dirs(tmp_path, "limited")],
                          capture_output=True, text=True, env=env, preexec_fn=limited, timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "step-000001" in err and "file too large" in err and "no step checkpoint was written yet" in err
    run_dir = h.run_dir_of(tmp_path, "limited")
    assert not ckpt.step_checkpoints(run_dir) and not [p for p in (run_dir / "checkpoints").iterdir()]

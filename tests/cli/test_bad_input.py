"""Bad input as a new user would give it: each class is one line on stderr and exit code 2, before
any work is spent (no model built, no run folder made); damaged files skipped by compare are named."""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

RUN = "tiny__sudoku__espo__seed0"
TINY = ["--set", "pretrain.steps=30", "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4",
        "--set", "rollout.group_size=2", "--set", "eval.max_examples=4"]


def _paths(tmp_path):
    return tmp_path / "results", tmp_path / "runs"


def _file_at(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")


def run_dir_is_a_file(tmp_path):
    _file_at(_paths(tmp_path)[1] / RUN)
    return [], "is a file, not a folder"


def checkpoints_is_a_file(tmp_path):
    _file_at(_paths(tmp_path)[1] / RUN / "checkpoints")
    return [], "is a file where the run keeps a folder"


def final_is_a_file(tmp_path):
    _file_at(_paths(tmp_path)[1] / RUN / "final")
    return [], "is a file where the run keeps a folder"


def metrics_log_is_a_folder(tmp_path):
    (_paths(tmp_path)[1] / RUN / "metrics.jsonl").mkdir(parents=True)
    return [], "is a folder where the run writes a file"


def results_file_is_a_folder(tmp_path):
    (_paths(tmp_path)[0] / f"{RUN}.json").mkdir(parents=True)
    return [], "is a folder"


def results_dir_is_a_file(tmp_path):
    _file_at(_paths(tmp_path)[0])
    return [], "is a file, not a folder"


def binary_recipe(tmp_path):
    (tmp_path / "recipe.yaml").write_bytes(bytes(range(256)) * 4)
    return ["--recipe", str(tmp_path / "recipe.yaml")], "is not text"


def recipe_not_a_mapping(tmp_path):
    (tmp_path / "recipe.yaml").write_text("- just\n- a list\n")
    return ["--recipe", str(tmp_path / "recipe.yaml")], "must be a mapping"


def resume_without_a_run(tmp_path):
    return ["--resume"], "no checkpoint in"


def no_training_steps(tmp_path):
    return ["--set", "optim.max_steps=0"], "max_steps"


def negative_temperature(tmp_path):
    return ["--set", "rollout.temperature=-1"], "temperature must be >= 0"


def blocks_too_short_for_evaluation(tmp_path):
    return ["--set", "rollout.block_length=1"], "too short to evaluate at L=24"


def unknown_split(tmp_path):
    return ["--set", "eval.split=tset"], "eval.split 'tset' is not a split"


def unknown_tracker(tmp_path):
    return ["--set", "output.report_to=tensorbored"], "unknown tracker"


@pytest.mark.parametrize("case", [run_dir_is_a_file, checkpoints_is_a_file, final_is_a_file, metrics_log_is_a_folder,
                                  results_file_is_a_folder, results_dir_is_a_file, binary_recipe, recipe_not_a_mapping,
                                  resume_without_a_run, no_training_steps, negative_temperature,
                                  blocks_too_short_for_evaluation, unknown_split],
                         ids=lambda c: c.__name__)
def test_bad_run_input_is_one_line_before_any_work(case, tmp_path, monkeypatch, run_main):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    extra, needle = case(tmp_path)
    results, runs = _paths(tmp_path)
    code, _, err = run_main(["run", *TINY, "--results-dir", str(results), "--run-dir", str(runs), *extra])
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # no base model was built
    if case is resume_without_a_run:
        assert not runs.exists() and not results.exists()  # and no folder was made


def test_unknown_tracker_is_one_line(tmp_path, run_main):
    extra, needle = unknown_tracker(tmp_path)
    code, _, err = run_main(["run", *TINY, *extra, "--results-dir", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs")])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [(["--lengths", "0"], "at least 1"), (["--lengths=-3"], "at least 1"),
                                          (["--lengths", "a,b"], "comma-separated integers"),
                                          (["--split", "nope"], "unknown split 'nope'")])
def test_evaluate_options_are_checked_before_the_model_loads(tmp_path, monkeypatch, run_main, args, needle):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    code, _, err = run_main(["evaluate", *TINY, *args])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_evaluate_checkpoint_that_is_not_a_model_folder(tmp_path, run_main):
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(["evaluate", *TINY, "--checkpoint", str(tmp_path / "empty")])
    assert code == 2 and "has no config.json" in err and len(err.strip().splitlines()) == 1


def test_evaluate_truncated_checkpoint_weights(tmp_path, run_main):
    from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig

    folder = tmp_path / "final"
    TinyDLM(TinyDLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).save_pretrained(folder)
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.truncate(64)
    code, _, err = run_main(["evaluate", *TINY, "--checkpoint", str(folder)])
    assert code == 2 and "could not be loaded" in err and str(folder) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _result(seed=0, **changes):
    from dllm_rl.results import SCHEMA

    r = {"schema": SCHEMA, "model": "tiny", "task": "sudoku", "algorithm": "espo", "seed": seed, "label": "",
         "protocol": {"primary_metric": "accuracy"}, "metrics": {"24": {"accuracy": 0.5, "n": 9, "nfe": 12}},
         "base": {"24": {"accuracy": 0.3, "n": 9, "nfe": 12}}}
    r.update(changes)
    return r


@pytest.mark.parametrize("name, content, why", [
    ("binary.json", bytes(range(256)), "not text"),
    ("cut.json", json.dumps(_result())[:40].encode(), "not valid JSON"),
    ("no-protocol.json", json.dumps({k: v for k, v in _result().items() if k != "protocol"}).encode(), "'protocol'"),
    ("bad-metrics.json", json.dumps(_result(metrics={"24": {"accuracy": "high"}})).encode(), "'metrics'"),
    ("bad-curve.json", json.dumps(_result(training={"steps": 2, "curve": [{"reward": 0.5}]})).encode(), "'training.curve'"),
])
def test_compare_names_each_damaged_file_and_exits_2_only_when_nothing_is_read(tmp_path, run_main, name, content, why):
    (tmp_path / name).write_bytes(content)
    code, out, err = run_main(["compare", str(tmp_path)])
    assert code == 2 and "no results files" in err and name in err and why in err and "Traceback" not in err

    (tmp_path / "good.json").write_text(json.dumps(_result()))
    (tmp_path / "other.json").write_text(json.dumps({"something": "else"}))
    code, out, err = run_main(["compare", str(tmp_path), "--format", "csv"])
    assert code == 0 and "espo" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and name in lines[0] and why in lines[0] and "other.json" in lines[1]


def test_compare_costs_name_runs_without_training_costs(tmp_path, run_main):
    (tmp_path / "good.json").write_text(json.dumps(_result(
        training={"steps": 2, "curve": [{"step": 0, "reward": 0.5}], "rollouts_per_step": 8, "gen_length": 24,
                  "rollout_nfe_per_sample": 12.0}, timing={"train_s": 6.0})))
    (tmp_path / "no-timing.json").write_text(json.dumps(_result(seed=1, training={"steps": 2, "curve": []})))
    code, out, err = run_main(["compare", str(tmp_path), "--costs"])
    assert code == 0 and "training cost" in out
    assert len(err.strip().splitlines()) == 1 and "no-timing.json" in err and "'training.rollouts_per_step'" in err


def test_compare_tables_of_their_own_are_refused_with_tidy_formats(tmp_path, run_main):
    (tmp_path / "good.json").write_text(json.dumps(_result()))
    for fmt in ("csv", "json"):
        code, out, err = run_main(["compare", str(tmp_path), "--format", fmt, "--costs"])
        assert code == 2 and "--format table or markdown" in err and not out


def test_compare_on_a_file_says_it_is_a_file(tmp_path, run_main):
    (tmp_path / "r.json").write_text(json.dumps(_result()))
    code, _, err = run_main(["compare", str(tmp_path / "r.json")])
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_leftovers_of_killed_writers_are_cleaned_and_live_ones_kept(tmp_path):
    from dllm_rl.atomic import _host
    from dllm_rl.outputs import check_outputs

    results, runs = _paths(tmp_path)
    run_dir = runs / RUN
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    run_dir.mkdir(parents=True)
    results.mkdir()
    stale_file = results / f".{RUN}.json~{_host()}~{dead_pid}~abc.tmp"
    stale_dir = run_dir / f".final~{_host()}~{dead_pid}~xyz"
    live_file = results / f".{RUN}.json~{_host()}~{os.getpid()}~def.tmp"
    stale_file.write_text("{")
    stale_dir.mkdir()
    live_file.write_text("{")
    check_outputs(results, results / f"{RUN}.json", run_dir)
    assert not stale_file.exists() and not stale_dir.exists() and live_file.exists()


def test_replacing_a_cached_folder_never_hides_it_from_a_reader(tmp_path):
    from dllm_rl.atomic import atomic_write_dir

    path = tmp_path / "cache" / "model"
    atomic_write_dir(path, lambda tmp: (tmp / "config.json").write_text("0"))
    misses, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                (path / "config.json").read_text()
            except FileNotFoundError:
                misses.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            atomic_write_dir(path, lambda tmp, i=i: (tmp / "config.json").write_text(str(i)))
    finally:
        stop.set()
        thread.join()
    assert not misses and (path / "config.json").read_text() == "199"
    assert [p.name for p in path.parent.iterdir()] == ["model"]  # no temporary folders left


LAUNCHER = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")


@pytest.mark.skipif(not Path(LAUNCHER).exists(), reason="accelerate's launcher is not installed")
@pytest.mark.parametrize("case", ["every process", "main process only"])
def test_bad_input_under_accelerate_launch_is_one_line(tmp_path, case):
    """Two processes over gloo. A bad --set fails on both; a results file that is a folder fails the
    main process's output check only, which every process then raises: either way one line, a
    non-zero exit, and no process left behind (none waits at a barrier)."""
    import time

    if case == "every process":
        args, needle = ["--set", "optim.lr=fast"], "optim.lr: expected float"
    else:
        (tmp_path / "r" / f"{RUN}.json").mkdir(parents=True)
        args, needle = ["--results-dir", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs")], "is a folder"
    started = time.time()
    proc = subprocess.run([LAUNCHER, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dllm_rl.cli", "run", *TINY, *args],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "DLLM_RL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count(needle) == 1 and text.count("error:") == 1, text
    assert "Traceback" not in text and "ChildFailedError" not in text
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"dllm_rl.cli run .*{tmp_path}" if case != "every process" else "optim.lr=fast"],
                          capture_output=True, text=True).stdout.split()
    assert not left, f"processes left behind: {left} ({time.time() - started:.0f} s)"


def test_settings_only_training_uses_are_not_checked_for_evaluation(run_main, tmp_path):
    """A training recipe's validation split or rollout steps do not stop `evaluate` on a test-only task,
    while `run` with the same settings is refused before any model loads; a family's known prompt
    style is what the checks use (LLaDA: chat, whose L=256 needs more than 4 steps)."""
    from dllm_rl.errors import UsageError
    from dllm_rl.pipeline import resolve_config

    with pytest.raises(UsageError, match="eval.val_split 'validation' is not a split of task 'humaneval'"):
        resolve_config("espo", "humaneval", "llada", "llada-8b-espo-countdown")
    resolve_config(None, "humaneval", "llada", "llada-8b-espo-countdown", training=False)
    with pytest.raises(UsageError, match="4 denoising steps cannot cover the 8 blocks of gen_length 256"):
        resolve_config("espo", "sudoku", "llada", sets=("rollout.steps=4",))
    resolve_config("espo", "sudoku", "tiny", sets=("rollout.steps=4",))  # direct style, L=24: one block

"""`dllm-rl sweep` end to end on the tiny model (2-step runs), resumed, then `compare` with plots."""
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest



TINY = ["--set", "pretrain.steps=30", "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4",
        "--set", "rollout.group_size=2", "--set", "eval.max_examples=12", "--set", "algorithm.mu=1"]




def test_sweep_writes_one_file_per_run_resumes_and_compares(tmp_path, capsys, run_main):
    out = tmp_path / "res"
    args = ["sweep", "--algo", "wd1", "--task", "sudoku", "--seeds", "0,1", "--out", str(out),
            "--run-dir", str(tmp_path / "runs"), *TINY]
    code, stdout, err = run_main(args)
    assert code == 0, err
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["tiny__sudoku__wd1__seed0.json", "tiny__sudoku__wd1__seed1.json"]
    first = [json.loads((out / f).read_text()) for f in files]
    assert [r["seed"] for r in first] == [0, 1] and "2 ran, 0 skipped" in stdout

    code, stdout, _ = run_main(args)  # the same command again: nothing to do
    assert code == 0 and "0 ran, 2 skipped" in stdout
    assert [json.loads((out / f).read_text()) for f in files] == first

    code, stdout, err = run_main(["compare", str(out), "--format", "csv", "--plots", str(tmp_path / "plots")])
    assert code == 0, err
    rows = [r for r in csv.DictReader(io.StringIO(stdout)) if r["metric"] == "accuracy" and r["row"] == "after"]
    assert len(rows) == 1 and rows[0]["algorithm"] == "wd1" and rows[0]["n"] == "2"
    accs = [r["metrics"]["24"]["accuracy"] for r in first]
    assert float(rows[0]["mean"]) == pytest.approx(sum(accs) / 2)
    assert float(rows[0]["std"]) == pytest.approx(statistics.stdev(accs))
    assert (tmp_path / "plots" / "reward_sudoku.png").stat().st_size > 5000


def test_sweep_bad_input_is_one_line(tmp_path, capsys, run_main):
    for args, needle in [(["sweep", "--task", "sudoku"], "at least one algorithm"),
                         (["sweep", "--algo", "espo", "--task", "sudoku", "--seeds", "a,b"], "bad --seeds"),
                         (["sweep", "--algo", "espo", "--task", "sudoku", "--variant", "k1"], "bad --variant"),
                         (["sweep", "--grid", str(tmp_path / "missing.yaml")], "does not exist"),
                         (["compare", str(tmp_path), "--plots", str(tmp_path / "p")], "no results files")]:
        code, _, err = run_main(args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)


def _status(pid: int) -> dict[str, str]:
    """Fields of /proc/<pid>/status; empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, v in (line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)}


def _alive(pid: int) -> bool:
    state = _status(pid).get("State", "")
    return bool(state) and not state.startswith("Z")


def _pool_workers(pid: int) -> set[int]:
    """Live multiprocessing workers (``spawn_main``) whose parent is ``pid``."""
    out = set()
    for entry in Path("/proc").glob("[0-9]*"):
        child = int(entry.name)
        if _status(child).get("PPid") == str(pid) and _alive(child):
            try:
                if b"spawn_main" in (entry / "cmdline").read_bytes():
                    out.add(child)
            except OSError:
                continue
    return out


def test_killed_parallel_sweep_stops_its_workers(tmp_path):
    """SIGTERM to `dllm-rl sweep --workers 2` must not leave worker processes running (writing results)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    args = ["sweep", "--algo", "espo", "--task", "sudoku", "--seeds", "0,1", "--workers", "2",
            "--out", str(tmp_path / "res"), "--run-dir", str(tmp_path / "runs"),
            *TINY, "--set", "optim.max_steps=1000"]
    env = {**os.environ, "DLLM_RL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from dllm_rl.cli import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    workers: set[int] = set()
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = _pool_workers(proc.pid)
    assert len(workers) >= 2, "the sweep never started its workers"
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(1)
    alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, proc.stdout.read()
    assert not list((tmp_path / "res").glob("*.json"))

"""A third-party package adds an algorithm and a task through entry points, with no change to dllm-rl."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Install the example plugin package (a real wheel install into a target folder, offline)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PLUGIN)], check=True, capture_output=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env["DLLM_RL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors: more threads only spin on a busy machine
    return env


def dllm_rl(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "dllm_rl.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_list_shows_entry_point_plugins(plugin_env, tmp_path):
    out = dllm_rl(["list"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "elbo-reinforce" in text and "reverse" in text
    assert "dllm-rl-example-plugin" in text  # the source column names the distribution
    assert "REINFORCE on the sequence ELBO, no ratio, no KL (example plugin)" in text  # its description attribute
    assert "Reverse a string of digits (example plugin task)" in text  # its docstring's first line
    assert "warning" not in out.stderr


def test_plugin_presets_apply_to_the_plugins_runs(plugin_env, monkeypatch):
    from dllm_rl.pipeline import resolve_config

    monkeypatch.syspath_prepend(plugin_env["PYTHONPATH"].split(os.pathsep)[0])
    assert resolve_config("elbo-reinforce", "reverse", "tiny").pretrain.steps == 150
    other_task = resolve_config("elbo-reinforce", "sudoku", "tiny").pretrain.steps  # reverse's preset stays its own
    assert other_task == resolve_config("espo", "sudoku", "tiny").pretrain.steps != 150


def test_run_uses_entry_point_plugins(plugin_env, tmp_path):
    out = dllm_rl(["run", "--algo", "elbo-reinforce", "--task", "reverse", "--set", "pretrain.steps=30",
                   "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4", "--set", "rollout.group_size=2",
                   "--set", "eval.max_examples=8"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    [path] = tmp_path.rglob("tiny__reverse__elbo-reinforce__seed0.json")
    result = json.loads(path.read_text())
    assert result["algorithm"] == "elbo-reinforce" and result["task"] == "reverse"
    assert result["training"]["steps"] == 2 and len(result["training"]["curve"]) == 2
    assert set(result["metrics"]) == {"8"} and result["metrics"]["8"]["n"] == 8


def test_unknown_plugin_name_is_one_line_exit_2(plugin_env, tmp_path):
    out = dllm_rl(["run", "--task", "revers"], plugin_env, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "Did you mean 'reverse'" in out.stderr and "Traceback" not in out.stderr


def test_an_entry_point_reusing_a_builtin_name_is_a_warning_in_list_and_an_error_when_used(run_main, tmp_path,
                                                                                           monkeypatch, install_dist):
    install_dist(tmp_path, "clashing-plugin", {"tasks": {"sudoku": "clashing_plugin:Sudoku"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_main(["list"])
    assert code == 0 and "sudoku" in out
    assert err.strip().startswith("warning: task 'sudoku' is defined twice") and "'clashing-plugin'" in err
    code, out, err = run_main(["run", "--task", "sudoku"])
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "error: task 'sudoku' is defined twice: built-in and an entry point of package 'clashing-plugin'" in err
    code, _, _ = run_main(["config", "show", "--task", "countdown"])  # other names are unaffected
    assert code == 0

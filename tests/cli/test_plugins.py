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
    return env


def dllm_rl(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "dllm_rl.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_list_shows_entry_point_plugins(plugin_env, tmp_path):
    out = dllm_rl(["list"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "elbo-reinforce" in text and "reverse" in text
    assert "dllm-rl-example-plugin" in text  # the source column names the distribution


def test_run_uses_entry_point_plugins(plugin_env, tmp_path):
    out = dllm_rl(["run", "--algo", "elbo-reinforce", "--task", "reverse", "--set", "pretrain.steps=30",
                   "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4", "--set", "rollout.group_size=2",
                   "--set", "eval.max_examples=8"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads((tmp_path / "results" / "tiny__reverse__elbo-reinforce__seed0.json").read_text())
    assert result["algorithm"] == "elbo-reinforce" and result["task"] == "reverse"
    assert result["training"]["steps"] == 2 and len(result["training"]["curve"]) == 2
    assert set(result["metrics"]) == {"8"} and result["metrics"]["8"]["n"] == 8


def test_unknown_plugin_name_is_one_line_exit_2(plugin_env, tmp_path):
    out = dllm_rl(["run", "--task", "revers"], plugin_env, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "Did you mean 'reverse'" in out.stderr and "Traceback" not in out.stderr

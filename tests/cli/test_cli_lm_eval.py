"""`dllm-rl evaluate --lm-eval`: an offline run on shipped task YAMLs writes one results JSON; bad
lm-eval input fails in one line with exit code 2 before any model is loaded. `dllm-rl lm-eval` and
`python -m dllm_rl.lm_eval_cli`: lm-eval's own command line, run as a user runs it, with the model registered."""
import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval.evaluator  # noqa: F401  (one-time imports of several seconds each, paid at collection)
import pytest

import dllm_rl.models.tiny_family  # noqa: F401

TASKS = str(Path(__file__).parents[1] / "fixtures" / "lm_eval")
TINY = ["--task", "sudoku", "--set", "pretrain.steps=5", "--set", "task.train_puzzles_per_grid=1",
        "--set", "pretrain.hidden_size=32", "--set", "pretrain.intermediate_size=64", "--set", "pretrain.num_layers=1"]
TINY_RECIPE = "pretrain: {steps: 5, hidden_size: 32, intermediate_size: 64, num_layers: 1}\ntask: {name: sudoku, params: {train_puzzles_per_grid: 1}}\n"


def test_lm_eval_from_the_command_line_writes_one_results_file(tmp_path, capsys, run_main):
    out = tmp_path / "lm.json"
    code, stdout, err = run_main(["evaluate", *TINY, "--lm-eval", "dllm_tiny_sudoku_mc",
                                  "--lm-eval-include", TASKS, "--lm-eval-limit", "2", "--lm-eval-arg", "mc_samples=2", "--lm-eval-arg", "greedy_check=false",
                                  "--lm-eval-output", str(out)])
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["schema"] == "dllm-rl/lm-eval/v1" and data["model"] == "tiny" and data["limit"] == 2
    assert data["adapter_config"]["mc_samples"] == 2 and data["adapter_config"]["greedy_check"] is False and "lm_eval" in data["versions"]
    results = data["lm_eval"]["results"]
    assert results["dllm_tiny_sudoku_mc"]["sample_len"] == 2 and results["dllm_tiny_sudoku_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    assert "samples" not in data["lm_eval"] and "dllm_tiny_sudoku_mc" in stdout
    assert data["lm_eval"]["config"]["dllm_rl_mc_error"]["loglikelihood"]["questions"] == 2
    assert "Monte-Carlo standard error (mc_samples=2)" in stdout and "of 2 questions are close calls" in stdout
    assert not list(tmp_path.glob(".lm.json*"))  # no temporary file left behind


@pytest.mark.parametrize("args, needle", [
    (["--lm-eval", "x", "--lm-eval-limit", "0"], "--lm-eval-limit"),
    (["--lm-eval", "x", "--lm-eval-include", "/nonexistent/tasks"], "is not a folder"),
    (["--lm-eval", "x", "--lm-eval-arg", "mc_sample=3"], "unknown setting 'lm-eval.mc_sample'"),
    (["--lm-eval", " , "], "no lm-eval tasks"),
    (["--lm-eval", "x", "--lm-eval-arg", "model=llada"], "is not an adapter setting"),
])
def test_bad_lm_eval_input_is_one_line_and_exit_2(args, needle, capsys, run_main):
    code, _, err = run_main(["evaluate", *TINY, *args])
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def lm_eval_command(entry, tmp_path, *args):
    """Run lm-eval's command line through ``entry`` in a fresh process, as a user would: the tiny model
    (a 5-step base from the test cache) on a shipped task; returns (exit code, stdout, stderr)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    argv = [sys.executable, "-m", *entry, "--model", "dllm-rl", "--model_args",
            f"model=tiny,recipe={recipe},mc_samples=2,greedy_check=false", "--include_path", TASKS, "--limit", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_dllm_rl_lm_eval_hands_every_argument_to_lm_eval(tmp_path):
    code, out, err = lm_eval_command(["dllm_rl.cli", "lm-eval"], tmp_path, "--tasks", "dllm_tiny_sudoku_mc",
                                     "--batch_size", "4", "--output_path", str(tmp_path / "out"))
    assert code == 0, err
    (path,) = (tmp_path / "out").rglob("results_*.json")
    data = json.loads(path.read_text())
    assert data["results"]["dllm_tiny_sudoku_mc"]["sample_len"] == 2 and data["config"]["model"] == "dllm-rl"
    assert data["config"]["dllm_rl_adapter"]["mc_samples"] == 2 and data["config"]["dllm_rl_adapter"]["batch_size"] == 4
    mc = data["config"]["dllm_rl_mc_error"]["loglikelihood"]
    assert (mc["requests"], mc["questions"]) == (6, 2) and mc["stderr_mean"] > 0  # 2 questions x 3 choices
    assert "Running loglikelihood requests" in err and "Monte-Carlo standard error (mc_samples=2)" in err
    assert "dllm_tiny_sudoku_mc" in out and "acc" in out  # lm-eval's own results table


def test_python_m_lm_eval_cli_runs_lm_eval_with_the_model(tmp_path):
    code, out, err = lm_eval_command(["dllm_rl.lm_eval_cli"], tmp_path, "--tasks", "dllm_tiny_sudoku_gen")
    assert code == 0, err
    assert "dllm_tiny_sudoku_gen" in out and "exact_match" in out and "Running generate_until requests" in err


def test_lm_eval_cli_bad_model_args_are_one_line_and_exit_2(tmp_path):
    code, _, err = lm_eval_command(["dllm_rl.lm_eval_cli"], tmp_path, "--tasks", "dllm_tiny_sudoku_mc",
                                   "--model_args", "mc_sample=3")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: unknown setting 'lm-eval.mc_sample' (did you mean 'mc_samples'?)")

"""`dllm-rl evaluate --lm-eval`: an offline run on shipped task YAMLs writes one results JSON; bad
lm-eval input fails in one line with exit code 2 before any model is loaded."""
import json
from pathlib import Path

import lm_eval.evaluator  # noqa: F401  (one-time imports of several seconds each, paid at collection)
import pytest

import dllm_rl.models.tiny_family  # noqa: F401

TASKS = str(Path(__file__).parents[1] / "fixtures" / "lm_eval")
TINY = ["--task", "sudoku", "--set", "pretrain.steps=5", "--set", "task.train_puzzles_per_grid=1",
        "--set", "pretrain.hidden_size=32", "--set", "pretrain.intermediate_size=64", "--set", "pretrain.num_layers=1"]




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
    assert not list(tmp_path.glob(".lm.json*"))  # no temporary file left behind


@pytest.mark.parametrize("args, needle", [
    (["--lm-eval", "x", "--lm-eval-limit", "0"], "--lm-eval-limit"),
    (["--lm-eval", "x", "--lm-eval-include", "/nonexistent/tasks"], "is not a folder"),
    (["--lm-eval", "x", "--lm-eval-arg", "mc_sample=3"], "unknown setting 'lm-eval.mc_sample'"),
    (["--lm-eval", " , "], "no lm-eval tasks"),
])
def test_bad_lm_eval_input_is_one_line_and_exit_2(args, needle, capsys, run_main):
    code, _, err = run_main(["evaluate", *TINY, *args])
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

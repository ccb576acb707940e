"""The command line end to end on tiny budgets: bad input, reproducibility, results and compare."""
import csv
import io
import json
import os
import stat

import pytest
from click.testing import CliRunner

from dllm_rl.cli import cli
from dllm_rl.results import TIMING_KEYS

TINY = ["--set", "pretrain.steps=30", "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4",
        "--set", "rollout.group_size=2", "--set", "eval.max_examples=12", "--set", "algorithm.mu=2"]




@pytest.mark.parametrize("args, needle", [
    (["run", "--algo", "espoo"], "Did you mean 'espo'"),
    (["run", "--task", "sudok"], "Did you mean 'sudoku'"),
    (["run", "--model", "llama-9000"], "unknown model"),
    (["run", "--set", "optim.lr=fast"], "optim.lr: expected float"),
    (["run", "--set", "optim.lrr=1"], "unknown setting 'optim.lrr'"),
    (["run", "--set", "nonsense"], "expected key=value"),
    (["run", "--set", "algorithm.kl=k9"], "kl must be one of k1, k2, k3"),
    (["run", "--set", "task.min_blanks=-3"], "task"),
    (["run", "--set", "optim.warmup_steps=-1"], "warmup_steps must be >= 0"),
    (["run", "--set", "optim.lr_schedule=step"], "lr_schedule must be one of constant, cosine, linear"),
    (["run", "--set", "algorithm.negative_weight=-0.5"], "negative_weight must be >= 0"),
    (["run", "--set", "pretrain.min_lr_ratio=1.5"], "min_lr_ratio must be in [0, 1]"),
    (["evaluate", "--task", "countdown", "--set", "task.max_number=2", "--set", "task.max_target=9",
      "--set", "task.test_size=2", "--set", "task.validation_size=2", "--set", "task.train_size=500"],
     "task.train_size=500 is more than this countdown config can make (only"),
    (["compare", "results", "--budget-seconds", "0"], "budget must be positive"),
    (["run", "--recipe", "/nonexistent/recipe.yaml"], "does not exist"),
    (["compare", "/nonexistent/results"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys, run_main):
    code, _, err = run_main(args)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unwritable_output_dir_is_one_line_and_exit_2(tmp_path, capsys, run_main):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(locked, os.W_OK):  # running as root: permissions do not bind, use a file as the folder
        locked = tmp_path / "a-file"
        locked.write_text("")
    code, _, err = run_main(["run", "--results-dir", str(locked / "results"), *TINY])
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def _without_timing(result):
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def test_same_seed_same_results_file_and_compare(tmp_path, capsys, run_main):
    outputs = []
    for _ in range(2):  # the same command twice, into the same folders
        code, out, err = run_main(["run", "--results-dir", str(tmp_path / "a"), "--run-dir", str(tmp_path / "runs-a"), *TINY])
        assert code == 0, err
        outputs.append(json.loads((tmp_path / "a" / "tiny__sudoku__espo__seed0.json").read_text()))
    a, b = outputs
    assert _without_timing(a) == _without_timing(b)  # bit-for-bit on CPU (wall-clock aside)
    assert a["training"]["steps"] == 2 and len(a["training"]["curve"]) == 2
    assert set(a["metrics"]["24"]) >= {"accuracy", "cell_accuracy", "n", "nfe"} and a["metrics"]["24"]["n"] == 12
    assert a["metrics"]["24"]["nfe"] == 12  # L/2 steps
    assert (tmp_path / "runs-a" / "tiny__sudoku__espo__seed0" / "final" / "config.json").is_file()
    lines = (tmp_path / "runs-a" / "tiny__sudoku__espo__seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]

    code, out, _ = run_main(["compare", str(tmp_path / "a"), "--format", "csv"])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))  # tidy: one record per model x row x task x length x metric
    assert list(rows[0]) == ["study", "model", "algorithm", "task", "length", "metric", "row", "mean", "std", "n"]
    acc = {r["row"]: r for r in rows if r["metric"] == "accuracy"}
    assert acc["base"]["algorithm"] == "(base)" and acc["after"]["algorithm"] == "espo" and acc["after"]["n"] == "1"
    assert float(acc["after"]["mean"]) == a["metrics"]["24"]["accuracy"] and acc["after"]["std"] == ""
    assert float(acc["delta"]["mean"]) == pytest.approx(a["metrics"]["24"]["accuracy"] - a["base"]["24"]["accuracy"])


def test_other_seed_changes_the_run(tmp_path, capsys, run_main):
    run_main(["run", "--seed", "1", "--results-dir", str(tmp_path), "--run-dir", str(tmp_path / "runs"), *TINY])
    result = json.loads((tmp_path / "tiny__sudoku__espo__seed1.json").read_text())
    assert result["seed"] == 1 and result["config"]["seed"] == 1


def test_list_names_sources():
    out = CliRunner().invoke(cli, ["list"])
    assert out.exit_code == 0
    assert "espo" in out.output and "sudoku" in out.output and "countdown" in out.output and "built-in" in out.output


def test_compare_warns_on_stderr_when_runs_have_different_bases(tmp_path, run_main):
    from dllm_rl.results import SCHEMA, result_filename, write_result

    for seed, base in enumerate((0.30, 0.273)):
        write_result(tmp_path / result_filename("tiny", "sudoku", "espo", seed),
                     {"schema": SCHEMA, "model": "tiny", "task": "sudoku", "algorithm": "espo", "seed": seed, "label": "",
                      "protocol": {"primary_metric": "accuracy"}, "metrics": {"24": {"accuracy": 0.5, "n": 9, "nfe": 12}},
                      "base": {"24": {"accuracy": base, "n": 9, "nfe": 12}}})
    code, out, err = run_main(["compare", str(tmp_path), "--format", "csv"])
    assert code == 0 and "2 different base models (27.3 % for espo; 30.0 % for espo)" in err
    assert "different base" not in out  # the table on stdout stays machine-readable
    assert len(err.strip().splitlines()) == 1

"""`dllm-rl sweep` end to end on the tiny model (2-step runs), resumed, then `compare` with plots."""
import json



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
    rows = [line.split(",") for line in stdout.strip().splitlines()]
    assert rows[0][-1] == "n" and rows[2][1] == "wd1" and rows[2][-1] == "2"
    accs = [100 * r["metrics"]["24"]["accuracy"] for r in first]
    assert rows[2][2].startswith(f"{sum(accs) / 2:.1f}")
    assert (tmp_path / "plots" / "reward_sudoku.png").stat().st_size > 5000


def test_sweep_bad_input_is_one_line(tmp_path, capsys, run_main):
    for args, needle in [(["sweep", "--task", "sudoku"], "at least one algorithm"),
                         (["sweep", "--algo", "espo", "--task", "sudoku", "--seeds", "a,b"], "bad --seeds"),
                         (["sweep", "--algo", "espo", "--task", "sudoku", "--variant", "k1"], "bad --variant"),
                         (["sweep", "--grid", str(tmp_path / "missing.yaml")], "does not exist"),
                         (["compare", str(tmp_path), "--plots", str(tmp_path / "p")], "no results files")]:
        code, _, err = run_main(args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)

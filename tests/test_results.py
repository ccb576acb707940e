"""compare's aggregation on synthetic results files: seeds of one model + algorithm + label averaged
into mean ± std (or sem) with n, labels kept apart, training curves averaged step by step, plots."""
import json
import math
import statistics

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.plots import plot_curves
from dllm_rl.results import SCHEMA, at_budget, costs, curves, leaderboard, load_results, mixed_bases, result_filename


def fake(algo, seed, acc, *, task="sudoku", label="", base=0.30, rewards=(0.1, 0.2, 0.3), model="tiny"):
    return {"schema": SCHEMA, "model": model, "task": task, "algorithm": algo, "seed": seed, "label": label,
            "protocol": {"primary_metric": "accuracy"},
            "metrics": {"24": {"accuracy": acc, "n": 100, "nfe": 12}}, "base": {"24": {"accuracy": base, "n": 100, "nfe": 12}},
            "training": {"curve": [{"step": i, "reward": r, "kl": 0.01 * i} for i, r in enumerate(rewards)]}}


def table(results, error="std"):
    header, rows = leaderboard(results, error)
    return header, {row[1]: row for row in rows}


def test_seeds_are_averaged_with_std_and_n():
    accs = [0.40, 0.50, 0.45]
    header, rows = table([fake("espo", s, a) for s, a in enumerate(accs)])
    assert header == ["model", "algorithm", "sudoku L=24", "n"]
    mean, sd = statistics.fmean(accs) * 100, statistics.stdev(accs) * 100
    assert rows["espo"][2] == f"{mean:.1f} ± {sd:.1f}" == "45.0 ± 5.0"
    assert rows["espo"][3] == "3"
    assert rows["Δ espo vs base"][2] == "+15.0"
    assert rows["(base)"][2] == "30.0 ± 0.0"


def test_standard_error_option():
    _, rows = table([fake("espo", s, a) for s, a in enumerate([0.40, 0.50, 0.45])], error="sem")
    assert rows["espo"][2] == f"45.0 ± {5.0 / math.sqrt(3):.1f}"
    with pytest.raises(UsageError, match="std, sem"):
        leaderboard([fake("espo", 0, 0.4)], error="ci")


def test_labels_are_separate_rows_and_n_counts_each():
    results = [fake("espo", 0, 0.6, label="k1"), fake("espo", 1, 0.4, label="k1"),
               fake("espo", 0, 0.7, label="k2"), fake("espo", 0, 0.5)]
    _, rows = table(results)
    assert rows["espo [k1]"][2:] == ["50.0 ± 14.1", "2"]
    assert rows["espo [k2]"][2:] == ["70.0", "1"]
    assert rows["espo"][2:] == ["50.0", "1"]


def test_n_shows_a_range_when_tasks_have_different_seed_counts():
    results = [fake("wd1", 0, 0.5), fake("wd1", 1, 0.5), fake("wd1", 0, 0.2, task="countdown")]
    header, rows = table(results)
    assert header[-1] == "n" and rows["wd1"][-1] == "1-2"


def test_curves_average_seeds_step_by_step_and_smooth_each_seed_first():
    results = [fake("espo", 0, 0.5, rewards=(0.0, 0.2, 0.4)), fake("espo", 1, 0.5, rewards=(0.2, 0.4)),
               fake("wd1", 0, 0.5, rewards=(0.1, 0.1, 0.1))]
    c = curves(results)["sudoku"]
    espo = c["tiny + espo"]
    assert espo["step"] == [0.0, 1.0, 2.0] and espo["n"] == [2.0, 2.0, 1.0]
    assert espo["mean"] == pytest.approx([0.1, 0.3, 0.4])
    assert espo["err"] == pytest.approx([statistics.stdev([0.0, 0.2]), statistics.stdev([0.2, 0.4]), 0.0])
    smoothed = curves(results, smooth=2)["sudoku"]["tiny + espo"]
    # seed 0 -> (0, 0.1, 0.3), seed 1 -> (0.2, 0.3)
    assert smoothed["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert curves(results, key="kl")["sudoku"]["tiny + wd1"]["mean"] == pytest.approx([0.0, 0.01, 0.02])


def test_plots_are_written_per_task_and_metric(tmp_path):
    results = [fake("espo", s, 0.5, rewards=(0.1 * s, 0.2, 0.3)) for s in range(3)]
    results += [fake("espo", 0, 0.5, task="countdown", label="k1")]
    written = plot_curves(results, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["reward_countdown.png", "reward_sudoku.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert [p.name for p in plot_curves(results, tmp_path / "plots", key="kl")] == ["kl_countdown.png", "kl_sudoku.png"]
    assert plot_curves(results, tmp_path / "none", key="missing") == []


def test_label_goes_into_the_file_name_and_folders_load_recursively(tmp_path):
    assert result_filename("tiny", "sudoku", "espo", 2, "k1") == "tiny__sudoku__espo__k1__seed2.json"
    assert result_filename("tiny", "sudoku", "espo", 2) == "tiny__sudoku__espo__seed2.json"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text(json.dumps(fake("espo", 0, 0.5)))
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    (tmp_path / "broken.json").write_text("{")
    assert [r["algorithm"] for r in load_results(tmp_path)] == ["espo"]


def test_runs_of_different_experiment_folders_are_never_averaged(tmp_path):
    (tmp_path / "grid").mkdir()
    (tmp_path / "main.json").write_text(json.dumps(fake("espo", 0, 0.40)))
    (tmp_path / "grid" / "a.json").write_text(json.dumps(fake("espo", 0, 0.60)))
    (tmp_path / "grid" / "b.json").write_text(json.dumps(fake("espo", 1, 0.80, label="k1")))
    _, rows = table(load_results(tmp_path))
    assert rows["espo"][2] == "40.0" and rows["espo (grid)"][2] == "60.0" and rows["espo [k1] (grid)"][2] == "80.0"
    _, rows = table(load_results(tmp_path / "grid"))  # the folder itself: plain names
    assert set(rows) >= {"espo", "espo [k1]"}


def test_cost_table_reports_budget_nfe_and_final_reward():
    def run(seed, nfe, train_s, label=""):
        r = fake("espo", seed, 0.5, label=label, rewards=(0.1,) * 5 + (0.5, 0.7))
        r["training"].update(steps=7, rollouts_per_step=128, gen_length=24, rollout_nfe_per_sample=nfe)
        r["timing"] = {"train_s": train_s}
        return r

    header, rows = costs([run(0, 12.0, 60.0), run(1, 12.0, 120.0), run(0, 4.8, 30.0, "thr")], last=2)
    by = {row[1]: dict(zip(header, row)) for row in rows}
    assert by["espo"]["train min"] == "1.5 ± 0.7" and by["espo"]["NFE / (L/2)"] == "1.00 ± 0.00"
    assert by["espo"]["s/step"] == f"{(60 / 7 + 120 / 7) / 2:.2f} ± {statistics.stdev([60 / 7, 120 / 7]):.2f}"
    assert by["espo [thr]"]["NFE / (L/2)"] == "0.40" and by["espo [thr]"]["reward (last 2)"] == "0.600"
    assert by["espo"]["steps"] == "7" and by["espo"]["n"] == "2"
    with pytest.raises(UsageError, match="records training"):
        costs([{**fake("espo", 0, 0.5), "training": None}])


def test_equal_wall_clock_takes_each_runs_last_validation_within_the_budget():
    def run(algo, seed, step_s, scores):
        r = fake(algo, seed, 0.5)
        r["timing"] = {"step_s": step_s}
        r["training"]["validation"] = [{"step": step, "metrics": {"24": {"accuracy": v, "n": 96}}} for step, v in scores]
        return r

    fast = [run("espo", 0, [1.0] * 4, [(2, 0.4), (4, 0.6)]), run("espo", 1, [1.5] * 4, [(2, 0.2), (4, 0.9)])]
    slow = run("token-elbo", 0, [3.0] * 4, [(2, 0.7), (4, 0.8)])
    header, rows = at_budget([*fast, slow], 4.5)
    by = {row[1]: dict(zip(header, row)) for row in rows}
    # within 4.5 s: seed 0 reaches step 4 (4 s: 0.6), seed 1 only step 2 (3 s: 0.2; step 4 ends at 6 s)
    assert by["espo"]["validation at 4.5 s"] == f"{40.0:.1f} ± {statistics.stdev([60.0, 20.0]):.1f}"
    assert by["espo"]["step reached"] == "2/4" and by["espo"]["n"] == "2"
    # token-elbo's first evaluation comes at 6 s: nothing within the budget
    assert by["token-elbo"]["validation at 4.5 s"] == "-" and by["token-elbo"]["n"] == "0"
    header, rows = at_budget([slow], 6.0)
    assert dict(zip(header, rows[0]))["validation at 6 s"] == "70.0"
    with pytest.raises(UsageError, match="positive"):
        at_budget(fast, 0)
    with pytest.raises(UsageError, match="eval.every"):
        at_budget([fake("espo", 0, 0.5)], 10)


def test_validation_metrics_are_curves_too():
    r = fake("espo", 0, 0.5)
    r["training"]["validation"] = [{"step": 10, "metrics": {"24": {"accuracy": 0.4, "n": 96}}},
                                   {"step": 20, "metrics": {"24": {"accuracy": 0.6, "n": 96}}}]
    other = fake("espo", 1, 0.5)
    other["training"]["validation"] = [{"step": 10, "metrics": {"24": {"accuracy": 0.2, "n": 96}}}]
    c = curves([r, other], key="val_accuracy")["sudoku"]["tiny + espo"]
    assert c["step"] == [10.0, 20.0] and c["mean"] == pytest.approx([0.3, 0.6]) and c["n"] == [2.0, 1.0]
    assert curves([r], key="val_cell_accuracy") == {}


def test_compare_table_shows_variant_labels_verbatim(tmp_path):
    """rich would read "[lr1e-5]" as markup and drop it; the table escapes its cells."""
    from click.testing import CliRunner

    from dllm_rl.cli import cli

    (tmp_path / "a.json").write_text(json.dumps(fake("wd1", 0, 0.5, label="lr1e-5")))
    out = CliRunner().invoke(cli, ["compare", str(tmp_path)], terminal_width=200).output
    assert "wd1 [lr1e-5]" in out


def test_runs_scored_against_different_bases_are_flagged_per_task():
    same = [fake("espo", 0, 0.5), fake("wd1", 0, 0.4), fake("espo", 0, 0.2, task="countdown", base=0.06)]
    assert mixed_bases(same) == []  # one base per task, even when tasks differ
    mixed = same + [fake("d1", 0, 0.3, base=0.273)]  # e.g. the same base recipe pretrained on another CPU
    (line,) = mixed_bases(mixed)
    assert line.startswith("tiny on sudoku L=24: 2 different base models (27.3 % for d1; 30.0 % for espo, wd1)")
    assert "and 1 more" in mixed_bases(mixed, shown=1)[0]
    assert mixed_bases([fake("espo", 0, 0.5), {**fake("x", 0, 0.5), "base": None}]) == []  # runs without a base score


def test_plot_lines_stay_distinct_beyond_the_ten_colours():
    from dllm_rl.plots import line_style

    styles = [line_style(i) for i in range(40)]
    assert len(set(styles)) == 40
    assert styles[0] == ("C0", "-") and styles[10] == ("C0", "--")


def test_smoothing_labels_say_how_far_apart_the_averaged_points_are(tmp_path):
    from dllm_rl.plots import smoothing_label

    every_step = [fake("espo", 0, 0.5, rewards=(0.1, 0.2, 0.3, 0.4))]
    assert smoothing_label(every_step, "reward", 1) == ""
    assert smoothing_label(every_step, "reward", 3) == " (moving average of 3 points)"
    r = fake("espo", 0, 0.5)
    r["training"]["validation"] = [{"step": s, "metrics": {"24": {"accuracy": 0.1 * s / 10}}} for s in (10, 20, 30)]
    assert smoothing_label([r], "val_accuracy", 2) == " (moving average of 2 points, 10 steps apart)"
    spiky = [fake("espo", 0, 0.5, rewards=(1e-4, 1e-3, 5.0))]
    written = plot_curves(spiky, tmp_path, "reward", log_scale=True)
    assert [p.name for p in written] == ["reward_sudoku.png"] and written[0].stat().st_size > 5000


def test_tidy_records_hold_mean_spread_and_n_per_row():
    from dllm_rl.results import tidy

    records = tidy([fake("espo", s, a) for s, a in enumerate([0.40, 0.50, 0.45])], "sem", study="s")
    after = next(r for r in records if r["row"] == "after")
    assert after["study"] == "s" and after["n"] == 3 and after["mean"] == pytest.approx(0.45)
    assert after["sem"] == pytest.approx(statistics.stdev([0.40, 0.50, 0.45]) / math.sqrt(3))
    delta = next(r for r in records if r["row"] == "delta")
    assert delta["mean"] == pytest.approx(0.15) and delta["sem"] is None
    base = next(r for r in records if r["row"] == "base")
    assert base["algorithm"] == "(base)" and base["mean"] == pytest.approx(0.30)

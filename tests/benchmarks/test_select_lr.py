"""The learning-rate pick from validation (benchmarks/select_lr.py): grouping by setting, seed 0 only."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "select_lr", Path(__file__).resolve().parents[2] / "benchmarks" / "select_lr.py")
select_lr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(select_lr)
rate_table, setting_of = select_lr.rate_table, select_lr.setting_of


@pytest.mark.parametrize("label, setting", [
    ("", ""), ("lr1e-5", ""), ("mu8-lr1e-6", "mu8"), ("tok-mu8-lr3e-6", "tok-mu8"),
    ("tok-elbo-lr1e-5", "tok-elbo"), ("lr2e-4-p64", "p64"), ("lr0.001", ""),
    ("mu8-cosine", "mu8-cosine"), ("clr1e-5", "clr1e-5"), ("lrx", "lrx"),
])
def test_setting_is_the_label_without_its_rate(label, setting):
    assert setting_of(label) == setting


def _run(label, lr, seed, vals, algorithm="espo"):
    return {"task": "sudoku", "algorithm": algorithm, "label": label, "seed": seed, "config": {"optim": {"lr": lr}},
            "training": {"validation": [{"step": 10 * (i + 1), "metrics": {"16": {"accuracy": v}}}
                                        for i, v in enumerate(vals)]}}


def test_rates_are_compared_within_a_setting_on_seed_0_validation_means():
    runs = [
        _run("lr1e-5", 1e-5, 0, [0.2, 0.4]),          # mean 0.3
        _run("lr3e-5", 3e-5, 0, [0.5, 0.1]),          # mean 0.3 (ties are fine; only the table is checked)
        _run("lr3e-5", 3e-5, 1, [0.9, 0.9]),          # seed 1: never used for the choice
        _run("mu8-lr1e-6", 1e-6, 0, [0.6, 0.2]),      # another setting: its own group
        _run("mu8-lr1e-5", 1e-5, 0, [0.1]),
        _run("", 5e-5, 0, []),                        # no validation during training: left out
        _run("lr1e-5", 1e-5, 0, [0.1, 0.1], algorithm="wd1"),
    ]
    table = rate_table(runs)
    assert set(table) == {("sudoku", "espo", ""), ("sudoku", "espo", "mu8"), ("sudoku", "wd1", "")}
    assert table[("sudoku", "espo", "")] == pytest.approx({1e-5: 0.3, 3e-5: 0.3})
    assert table[("sudoku", "espo", "mu8")] == pytest.approx({1e-6: 0.4, 1e-5: 0.1})
    assert table[("sudoku", "wd1", "")] == pytest.approx({1e-5: 0.1})


def test_choice_notes_a_rate_at_the_edge_of_the_grid():
    assert select_lr.choice_note({1e-5: 0.3}) == "lr 1e-05 (the only rate tried)"
    assert select_lr.choice_note({1e-6: 0.30, 3e-6: 0.25, 1e-5: 0.20}).endswith("(the lowest rate tried: the best may lie beyond it)")
    assert select_lr.choice_note({1e-6: 0.20, 1e-5: 0.30}).endswith("(the highest rate tried: the best may lie beyond it)")
    assert select_lr.choice_note({1e-6: 0.20, 3e-6: 0.35, 1e-5: 0.30}) == "lr 3e-06"


def test_missing_folder_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        select_lr.main([str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1

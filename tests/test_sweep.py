"""The sweep's planning and resume logic with a stand-in runner (no training): which runs are done,
which are to do, which conflict with an existing file; one failing run does not stop the others."""
import json
import textwrap
from pathlib import Path

import pytest

from dllm_rl import sweep
from dllm_rl.config import to_dict
from dllm_rl.errors import UsageError
from dllm_rl.results import SCHEMA, write_result


def grid(tmp_path, **kw):
    g = sweep.Grid(algorithms={"espo": [], "wd1": ["optim.lr=1e-3"]}, tasks=["sudoku"], seeds=[0, 1],
                   sets=["optim.max_steps=3"], out=str(tmp_path / "out"))
    for k, v in kw.items():
        setattr(g, k, v)
    return g


def finish(job, **changes):
    """Write the results file a run of ``job`` would have written (optionally with other settings)."""
    config = to_dict(job.run)
    for dotted, value in changes.items():
        node = config
        *path, last = dotted.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    write_result(job.path, {"schema": SCHEMA, "config": config, "algorithm": job.algorithm})


def test_plan_resolves_every_run_with_its_settings(tmp_path):
    jobs = sweep.plan(grid(tmp_path, variants={"k1": ["algorithm.kl=k1"], "k3": ["algorithm.kl=k3"]},
                           algorithms={"espo": ["optim.lr=2e-5"]}))
    assert [(j.algorithm, j.label, j.seed) for j in jobs] == [("espo", "k1", 0), ("espo", "k1", 1), ("espo", "k3", 0), ("espo", "k3", 1)]
    assert [j.path.name for j in jobs][:2] == ["tiny__sudoku__espo__k1__seed0.json", "tiny__sudoku__espo__k1__seed1.json"]
    for j in jobs:
        assert j.run.algorithm.params["kl"] == j.label and j.run.optim.lr == 2e-5 and j.run.optim.max_steps == 3
        assert j.run.output.label == j.label and j.run.output.results_dir == str(tmp_path / "out")
        assert j.status == "todo"


def test_done_runs_are_skipped_and_changed_ones_are_conflicts(tmp_path):
    jobs = sweep.plan(grid(tmp_path))
    finish(jobs[0])
    finish(jobs[1], **{"optim.max_steps": 5})
    finish(jobs[2], **{"output.results_dir": "/elsewhere", "output.run_dir": "/x"})  # moved: still the same run
    again = sweep.plan(grid(tmp_path))
    assert [j.status for j in again] == ["done", "conflict", "done", "todo"]
    assert "optim.max_steps: 5 -> 3" in again[1].detail
    assert [j.status for j in sweep.plan(grid(tmp_path), force=True)] == ["todo"] * 4
    with pytest.raises(UsageError, match="exists with another configuration .*optim.max_steps.*--force"):
        sweep.execute(again)


def test_a_setting_added_after_a_run_counts_as_its_default(tmp_path):
    """Results written before an option existed (its key absent) still match a run that keeps the
    option's default, and conflict with one that changes it."""
    def finish_without(job, section, key):
        config = to_dict(job.run)
        del config[section][key]
        write_result(job.path, {"schema": SCHEMA, "config": config, "algorithm": job.algorithm})

    jobs = sweep.plan(grid(tmp_path))
    finish_without(jobs[0], "rollout", "prompt_cache")
    finish_without(jobs[1], "rollout", "prompt_cache")
    assert [j.status for j in sweep.plan(grid(tmp_path))][:2] == ["done", "done"]
    changed = sweep.plan(grid(tmp_path, sets=["optim.max_steps=3", "rollout.prompt_cache=true"]))
    assert [j.status for j in changed][:2] == ["conflict", "conflict"]
    assert "rollout.prompt_cache: None -> True" in changed[0].detail


def test_a_plugin_option_pinned_to_its_default_matches_a_run_made_before_it(tmp_path):
    """A results file whose algorithm/task params lack an option was made with the option's default:
    a grid that pins the default finds it done, even where a preset now sets another value."""
    jobs = sweep.plan(grid(tmp_path))
    config = to_dict(jobs[0].run)
    config["algorithm"]["params"].pop("negative_weight", None)
    config["task"]["params"].pop("reward", None)
    write_result(jobs[0].path, {"schema": SCHEMA, "config": config, "algorithm": "espo"})
    pinned = ["optim.max_steps=3", "algorithm.negative_weight=1.0", "task.reward=cells"]
    assert sweep.plan(grid(tmp_path, sets=pinned))[0].status == "done"
    changed = sweep.plan(grid(tmp_path, sets=["optim.max_steps=3", "algorithm.negative_weight=0.5", "task.reward=cells"]))[0]
    assert changed.status == "conflict" and "algorithm.params.negative_weight: 1.0 -> 0.5" in changed.detail


def test_execute_runs_only_what_is_left_and_survives_a_failure(tmp_path, monkeypatch):
    jobs = sweep.plan(grid(tmp_path))
    finish(jobs[0])
    calls = []

    def fake_run(run):
        calls.append((run.algorithm.name, run.seed))
        if run.algorithm.name == "wd1" and run.seed == 0:
            raise RuntimeError("diverged")
        return {"path": "x", "metric": "accuracy", "after": 0.5, "base": 0.25, "seconds": 1.0}

    monkeypatch.setattr(sweep, "_run_job", fake_run)
    lines = []
    counts = sweep.execute(sweep.plan(grid(tmp_path)), workers=1, log=lines.append)
    assert calls == [("espo", 1), ("wd1", 0), ("wd1", 1)]
    assert counts == {"ran": 2, "skipped": 1, "failed": 1}
    assert any("skipped" in line and "espo seed 0" in line for line in lines)
    assert any("FAILED (RuntimeError: diverged)" in line for line in lines)
    assert any("accuracy 50.0 (base 25.0)" in line for line in lines)


def test_plain_variant_sits_next_to_labelled_ones(tmp_path):
    jobs = sweep.plan(grid(tmp_path, variants={"": [], "k1": ["algorithm.kl=k1"]}, algorithms={"espo": []}, seeds=[0]))
    assert [j.path.name for j in jobs] == ["tiny__sudoku__espo__seed0.json", "tiny__sudoku__espo__k1__seed0.json"]
    assert jobs[0].run.algorithm.params.get("kl", "k2") == "k2" and jobs[0].run.output.label == ""
    assert jobs[1].run.algorithm.params["kl"] == "k1"


def test_a_run_finished_by_another_sweep_meanwhile_is_skipped(tmp_path, monkeypatch):
    jobs = sweep.plan(grid(tmp_path, algorithms={"espo": []}))
    assert [j.status for j in jobs] == ["todo", "todo"]
    finish(jobs[1])  # another process wrote seed 1 after this sweep planned it
    calls = []
    monkeypatch.setattr(sweep, "_run_job", lambda run: calls.append(run.seed) or
                        {"path": "x", "metric": "accuracy", "after": 0.5, "base": 0.25, "seconds": 1.0})
    lines = []
    assert sweep.execute(jobs, workers=1, log=lines.append) == {"ran": 1, "skipped": 1, "failed": 0}
    assert calls == [0] and any("finished meanwhile" in line for line in lines)


def test_an_algorithm_may_carry_its_own_label(tmp_path):
    """Per-algorithm tuned rates: the label names the choice and joins the variant's."""
    g = grid(tmp_path, algorithms={"espo": [], "wd1": ["optim.lr=1e-5", "output.label=lr1e-5"]}, seeds=[0],
             variants={"": [], "m4": ["algorithm.mu=4"]})
    names = [j.path.name for j in sweep.plan(g)]
    assert names == ["tiny__sudoku__espo__seed0.json", "tiny__sudoku__espo__m4__seed0.json",
                     "tiny__sudoku__wd1__lr1e-5__seed0.json", "tiny__sudoku__wd1__lr1e-5-m4__seed0.json"]
    wd1 = sweep.plan(g)[2]
    assert wd1.run.optim.lr == 1e-5 and wd1.run.output.label == "lr1e-5"


def test_bad_grids_fail_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="at least one algorithm"):
        sweep.plan(grid(tmp_path, tasks=[]))
    with pytest.raises(UsageError, match="Did you mean 'espo'"):
        sweep.plan(grid(tmp_path, algorithms={"espoo": []}))
    with pytest.raises(UsageError, match="variant label"):
        sweep.plan(grid(tmp_path, variants={"a/b": []}))
    with pytest.raises(UsageError, match="--workers"):
        sweep.execute([], workers=0)


def test_grid_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent("""
        algorithms:
          espo: {optim.lr: 5.0e-5, algorithm.beta: 0.01}
          diffu-grpo: [optim.lr=1e-4]
        tasks: sudoku
        seeds: [0, 1, 2]
        set: {optim.max_steps: 40, eval.lengths: [24]}
        variants:
          k1: {algorithm.kl: k1}
    """))
    g = sweep.load_grid(str(path))
    assert g.algorithms == {"espo": ["optim.lr=5e-05", "algorithm.beta=0.01"], "diffu-grpo": ["optim.lr=1e-4"]}
    assert g.tasks == ["sudoku"] and g.seeds == [0, 1, 2] and g.variants == {"k1": ['algorithm.kl="k1"']}
    g.out = str(tmp_path / "out")
    jobs = sweep.plan(g)
    assert len(jobs) == 6 and jobs[0].run.optim.lr == 5e-5 and jobs[0].run.eval.lengths == [24]
    assert jobs[3].run.optim.lr == 1e-4 and jobs[3].run.algorithm.params["kl"] == "k1"
    path.write_text("algorithms: [espo]\nworkers: 4\n")
    with pytest.raises(UsageError, match="unknown key"):
        sweep.load_grid(str(path))


def test_each_invocation_is_recorded(tmp_path):
    g = grid(tmp_path)
    jobs = sweep.plan(g)
    for _ in range(2):
        sweep.record(g.out, g, jobs, {"ran": 1, "skipped": 3, "failed": 0}, 0.0)
    lines = (tmp_path / "out" / "sweeps.jsonl").read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[1])
    assert entry["runs"][0] == "tiny__sudoku__espo__seed0.json" and entry["grid"]["seeds"] == [0, 1] and entry["ran"] == 1


_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("name", sorted(p.stem for p in _EXPERIMENTS.glob("*.yaml")))
def test_shipped_experiment_grids_resolve(name, tmp_path):
    g = sweep.load_grid(str(_EXPERIMENTS / f"{name}.yaml"))
    g.out = str(tmp_path)
    jobs = sweep.plan(g)
    assert jobs and all(j.status == "todo" for j in jobs) and len({j.path for j in jobs}) == len(jobs)
    if name == "ablation-action-likelihood":
        cells = {(j.run.algorithm.params.get("action", "sequence"), j.run.algorithm.params.get("likelihood", "elbo")) for j in jobs}
        assert cells == {("sequence", "elbo"), ("sequence", "mean_field"), ("token", "elbo"), ("token", "mean_field")}
    if name.startswith("countdown-levers"):  # committed results pin ESPO's mu against later changes of the preset
        mus = {j.run.algorithm.params["mu"] for j in jobs if j.run.algorithm.name == "espo"}
        assert mus == ({8} if name.endswith("mu8") else {1})
        d1 = [j.run.algorithm.params for j in jobs if j.run.algorithm.name == "diffu-grpo"]
        assert all(p["beta"] == 0 and p["negative_weight"] == 0 and p["mu"] == 8 for p in d1)


@pytest.mark.parametrize("name", sorted(p.stem for p in _EXPERIMENTS.glob("*.yaml")))
def test_committed_results_are_what_their_grid_runs_today(name, monkeypatch):
    """A preset or default that changes after results were committed must not silently change what a
    shipped grid reruns: every results file a grid names matches its configuration (or is not run yet)."""
    monkeypatch.chdir(_EXPERIMENTS.parent)
    g = sweep.load_grid(str(_EXPERIMENTS / f"{name}.yaml"))
    jobs = sweep.plan(g)
    conflicts = [f"{j.path.name}: {j.detail}" for j in jobs if j.status == "conflict"]
    assert not conflicts, conflicts
    assert any(j.status == "done" for j in jobs), "no committed results found: the check compared nothing"

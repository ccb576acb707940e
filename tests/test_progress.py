"""Progress of every long phase through the Python API (pretraining, base evaluation, RL steps with the
algorithm's own metrics, validation, final evaluation), and what a results file says produced it."""
import io

from rich.console import Console

from dllm_rl import __version__
from dllm_rl.pipeline import resolve_config, run_pipeline
from dllm_rl.progress import RunProgress

SETS = ("pretrain.steps=10", "pretrain.hidden_size=32", "pretrain.num_layers=1", "pretrain.num_heads=2",
        "pretrain.intermediate_size=64", "optim.max_steps=2", "rollout.num_prompts=4", "rollout.group_size=2",
        "eval.max_examples=4", "eval.every=2", "optim.micro_batch_size=8")


def test_every_phase_reports_progress_and_the_live_line_shows_the_algorithms_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))  # fresh: the tiny base is pretrained here
    out = io.StringIO()
    progress = RunProgress(console=Console(file=out, force_terminal=False, width=200))
    run = resolve_config("wd1", "sudoku", "tiny", sets=SETS + (f"output.results_dir={tmp_path / 'r'}",
                                                               f"output.run_dir={tmp_path / 'runs'}"))
    result = run_pipeline(run, progress=progress)
    bars = [t.description for t in progress.rich.tasks]
    assert any(b.startswith("pretraining tiny") for b in bars)
    assert {"base model evaluation (test)", "validation at step 2", "final evaluation (test)"} <= set(bars)
    assert any(b.startswith("RL step 2: reward") and "mean_field" in b for b in bars)
    assert all(t.finished for t in progress.rich.tasks)
    log = out.getvalue()  # not a terminal: one line per finished phase and per logged step
    for phase in ("pretraining tiny base model on sudoku: done", "base model evaluation (test): done", "validation at step 2: done", "RL training: done in",
                  "final evaluation (test): done"):
        assert phase in log, log
    step_line = next(line for line in log.splitlines() if line.startswith("step 1/2"))
    assert "mean_field" in step_line and " kl " not in step_line and "clip" not in step_line  # wd1 has neither

    provenance = result["provenance"]
    assert provenance["git"]["commit"]  # a commit hash, or "unknown" outside a checkout
    assert provenance["plugins"]["algorithm"] == {"name": "wd1", "target": "dllm_rl.algorithms.wd1:WD1",
                                                  "distribution": "dllm-rl", "version": __version__}
    assert provenance["plugins"]["model"]["name"] == "tiny"


def test_silent_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    run = resolve_config("espo", "sudoku", "tiny", sets=SETS + ("eval.every=0", f"output.results_dir={tmp_path / 'r'}",
                                                                f"output.run_dir={tmp_path / 'runs'}"))
    run_pipeline(run, progress=False)
    captured = capsys.readouterr()
    assert "RL training" not in captured.err and "RL training" not in captured.out

"""One evaluation decoding: the trainer's evaluations, `dllm-rl evaluate` and the lm-eval adapter all
decode with ``evaluation.eval_sampler(run)`` (blocks of the run's rollout.block_length, not a fixed
32), and results files record it as data."""
import dataclasses

import pytest

from dllm_rl import evaluation
from dllm_rl.cli import main
from dllm_rl.diffusion.sampler import SamplerConfig
from dllm_rl.pipeline import build_task, load_model, resolve_config, run_pipeline

SETS = ("pretrain.steps=30", "rollout.block_length=8", "eval.max_examples=4", "eval.batch_size=4", "optim.max_steps=1")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "dllm_rl_cache"))


@pytest.fixture
def spy(monkeypatch):
    """The SamplerConfig of every generation call of the evaluation module."""
    seen: list[SamplerConfig] = []
    real = evaluation.generate

    def record(logits_fn, prompts, mask_id, pad_id, cfg, *args, **kwargs):
        seen.append(cfg)
        return real(logits_fn, prompts, mask_id, pad_id, cfg, *args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", record)
    return seen


def test_eval_sampler_is_greedy_low_confidence_half_steps_in_the_runs_blocks():
    run = resolve_config("espo", "sudoku", "tiny", sets=("rollout.block_length=8", "rollout.temperature=1.0",
                                                         "rollout.remasking=random", "rollout.steps=6"))
    cfg = evaluation.eval_sampler(run, 24)
    assert (cfg.gen_length, cfg.block_length, cfg.temperature, cfg.remasking, cfg.num_steps) == (24, 8, 0.0, "low_confidence", 12)
    assert evaluation.eval_sampler(None, 24).block_length == 32
    record = evaluation.decoding_record(run)
    assert record["block_length"] == 8 and record["temperature"] == 0.0 and record["steps"] is None
    assert "gen_length" not in record


def test_trainer_cli_and_lm_eval_decode_identically(tmp_path, spy, capsys):
    run = resolve_config("espo", "sudoku", "tiny", sets=SETS + (f"output.results_dir={tmp_path / 'r'}",
                                                                 f"output.run_dir={tmp_path / 'runs'}"))
    result = run_pipeline(run, progress=False, train=False)
    assert result["protocol"]["decoding"] == evaluation.decoding_record(run)
    trainer_cfgs = list(spy)
    spy.clear()

    try:
        main(["evaluate", "--task", "sudoku", *[a for s in SETS for a in ("--set", s)]])
    except SystemExit as exc:
        pytest.fail(f"evaluate exited {exc.code}: {capsys.readouterr().err}")
    cli_cfgs = list(spy)
    expected = evaluation.eval_sampler(run, 24)
    assert trainer_cfgs and cli_cfgs
    assert {dataclasses.astuple(c) for c in trainer_cfgs + cli_cfgs} == {dataclasses.astuple(expected)}

    pytest.importorskip("lm_eval")
    from dllm_rl.lm_eval_adapter import DiffusionLM

    task = build_task(run)
    adapter = load_model(run, task)
    lm = DiffusionLM(adapter, run=run)
    assert lm.sampler_config(24, 0.0, None, None).num_steps == expected.num_steps
    assert dataclasses.replace(lm.sampler_config(24, 0.0, None, None), steps=None) == expected
    prompts = [adapter.encode_prompt(task.prompt(ex, "direct")) for ex in task.examples("test")[:4]]
    ours, _, _ = evaluation.generate_texts(adapter, prompts, expected, 4)
    theirs, _, _ = evaluation.generate_texts(adapter, prompts, lm.sampler_config(24, 0.0, None, None), 4)
    assert ours == theirs

"""optim.ema_decay in a run: rollouts and updates are those of the plain run, the final evaluation
and the exported model are the weight average, and a resumed run continues the average exactly."""
import json
import shutil

from dllm_rl.results import TIMING_KEYS

PLAIN = ["--set", "optim.max_steps=3", "--set", "output.checkpoint_every=1", "--set", "eval.base=false",
         "--set", "output.completions=none"]
EMA = ["--set", "optim.ema_decay=0.5", *PLAIN]


def _strip(result):
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def test_the_average_is_evaluated_and_exported_while_rollouts_use_the_live_policy(tmp_path, tiny, h, monkeypatch):
    from dllm_rl import trainer as trainer_mod

    scored = []  # the weights each evaluation ran with

    def spy(adapter, *args):
        scored.append({k: v.clone() for k, v in adapter.model.state_dict().items()})
        return evaluate(adapter, *args)

    evaluate = trainer_mod.evaluate
    monkeypatch.setattr(trainer_mod, "evaluate", spy)
    code, err = h.cli(["run", *tiny, *EMA, *h.dirs(tmp_path, "ema")])
    assert code == 0, err
    final_scored = scored[-1]
    code, err = h.cli(["run", *tiny, *PLAIN, *h.dirs(tmp_path, "plain")])
    assert code == 0, err
    ema, ref = h.result_of(tmp_path, "ema"), h.result_of(tmp_path, "plain")
    assert ema["training"]["curve"] == ref["training"]["curve"]  # same rollouts, rewards and updates
    assert ema["training"]["evaluated_weights"] == "last, weight average (EMA, decay 0.5)"

    run_dir, ref_dir = h.run_dir_of(tmp_path, "ema"), h.run_dir_of(tmp_path, "plain")
    last = run_dir / "checkpoints" / "step-000003"
    from safetensors.torch import load_file
    average = load_file(str(last / "ema.safetensors"))
    live = h.weights(last)
    assert h.max_weight_diff(live, h.weights(ref_dir / "final")) == 0.0  # the live policy is the plain run's
    exported = h.weights(run_dir / "final")
    assert h.max_weight_diff({k: exported[k] for k in average}, average) == 0.0
    assert h.max_weight_diff({k: live[k] for k in average}, average) > 1e-5  # the average is not the last weights
    assert h.max_weight_diff({k: final_scored[k] for k in average}, average) == 0.0  # the test split scored the average

    from dllm_rl.config import RunConfig, from_dict
    from dllm_rl.models.tiny import TinyDLM
    from dllm_rl.models.tiny_family import make_adapter
    from dllm_rl.pipeline import build_task
    from transformers import PreTrainedTokenizerFast

    final = run_dir / "final"
    adapter = make_adapter(TinyDLM.from_pretrained(final).eval(), PreTrainedTokenizerFast.from_pretrained(final))
    scores = evaluate(adapter, build_task(from_dict(RunConfig, ema["config"])), "test", [24], 4, 11)
    assert {k: v for k, v in scores["24"].items() if k != "seconds"} == ema["metrics"]["24"]


def test_resumed_run_continues_the_average_to_the_same_results_file(tmp_path, tiny, h):
    best = ["--set", "eval.every=1", "--set", "eval.select=best"]
    code, err = h.cli(["run", *tiny, *EMA, *best, *h.dirs(tmp_path, "r")])
    assert code == 0, err
    reference = h.result_of(tmp_path, "r")
    exported = h.weights(h.run_dir_of(tmp_path, "r") / "final")
    assert reference["training"]["evaluated_weights"].endswith("weight average (EMA, decay 0.5)")
    shutil.rmtree(tmp_path / "r")
    code, err = h.cli(["run", *tiny, *EMA, *best, "--set", "optim.max_steps=2", *h.dirs(tmp_path, "r")])
    assert code == 0, err
    code, err = h.cli(["run", *tiny, *EMA, *best, "--resume", *h.dirs(tmp_path, "r")])
    assert code == 0, err
    assert _strip(h.result_of(tmp_path, "r")) == _strip(reference)  # bit for bit on CPU
    assert h.max_weight_diff(h.weights(h.run_dir_of(tmp_path, "r") / "final"), exported) == 0.0


def test_a_checkpoint_without_the_average_cannot_resume_with_one(tmp_path, tiny, h):
    code, err = h.cli(["run", *tiny, *PLAIN, "--set", "optim.max_steps=1", *h.dirs(tmp_path, "n")])
    assert code == 0, err
    code, err = h.cli(["run", *tiny, *EMA, "--resume", *h.dirs(tmp_path, "n")])
    assert code == 2 and "optim.ema_decay" in err and len(err.strip().splitlines()) == 1, err
    assert json.loads((h.run_dir_of(tmp_path, "n") / "checkpoints" / "step-000001" / "trainer_state.json").read_text())["step"] == 1

"""The run folder: resolved config, environment, per-step completions, trackers, best-validation
selection, and LoRA checkpoints that hold only the adapters."""
import gzip
import json

import pytest
import torch
import yaml

from dllm_rl.config import RunConfig, from_dict, to_dict
from dllm_rl.runlog import StepLog, git_commit


def test_run_folder_records_config_environment_and_completions(tmp_path, tiny, h):
    code, err = h.cli(["run", *tiny, "--set", "eval.base=false", *h.dirs(tmp_path, "a")])
    assert code == 0, err
    run_dir, result = h.run_dir_of(tmp_path, "a"), h.result_of(tmp_path, "a")
    config = from_dict(RunConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert to_dict(config) == result["config"]  # the resolved config, reusable as a recipe
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and "accelerate" in env["versions"]
    commit = env["git"]["commit"]
    assert commit == "unknown" or (len(commit) == 40 and int(commit, 16) >= 0)

    from dllm_rl.pipeline import build_algorithm, build_task

    task, algorithm = build_task(config), build_algorithm(config)
    by_id = {ex["id"]: ex for ex in task.examples("train")}
    records = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt_index"]) for r in records] == [(s, p) for s in range(2) for p in range(4)]
    for r in records:
        ex = by_id[r["example_id"]]
        assert r["prompt"] == task.prompt(ex, "direct")
        rewards = [c["reward"] for c in r["completions"]]
        assert rewards == [task.reward(ex, c["text"], "direct") for c in r["completions"]]  # the reward of that text
        want = algorithm.advantages(torch.tensor(rewards), len(rewards)).tolist()
        assert [c["advantage"] for c in r["completions"]] == pytest.approx(want, abs=1e-6)
    curve = result["training"]["curve"]
    rewards = [c["reward"] for r in records for c in r["completions"]]
    assert curve[0]["reward"] == pytest.approx(sum(rewards[:16]) / 16, abs=1e-6)


def test_git_commit_is_unknown_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) == {"commit": "unknown", "dirty": None}


def test_step_log_resume_drops_later_steps_and_a_cut_off_tail(tmp_path):
    for name in ("log.jsonl", "log.jsonl.gz"):
        path = tmp_path / name
        log = StepLog(path)
        for step in range(5):
            log.write({"step": step, "x": step * 10})
        log.close()
        if name.endswith(".jsonl"):
            with open(path, "a") as fh:
                fh.write('{"step": 5, "x"')  # a line cut off by a crash
        log = StepLog(path, resume_step=2)
        log.write({"step": 2, "x": -1})
        log.close()
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            assert [json.loads(line) for line in fh] == [{"step": 0, "x": 0}, {"step": 1, "x": 10}, {"step": 2, "x": -1}]


def test_best_validation_checkpoint_is_what_the_final_evaluation_scores(tmp_path, tiny, h, capsys):
    code, err = h.cli(["run", *tiny, "--set", "optim.max_steps=3", "--set", "eval.every=1", "--set", "eval.select=best",
                       "--set", "eval.base=false", "--set", "output.completions=none", *h.dirs(tmp_path, "b")])
    assert code == 0, err
    result, run_dir = h.result_of(tmp_path, "b"), h.run_dir_of(tmp_path, "b")
    values = [v["metrics"]["24"]["accuracy"] for v in result["training"]["validation"]]
    best = result["training"]["best_validation"]
    assert best["value"] == max(values) and values.index(max(values)) + 1 == best["step"]  # first of the best
    assert best["metric"].startswith("validation ")  # selected on the validation split, never test
    assert result["training"]["evaluated_weights"] == f"best (validation, step {best['step']})"
    assert f"after = the best (validation, step {best['step']}) weights" in capsys.readouterr().out  # the user sees it
    assert not (run_dir / "completions.jsonl").exists()

    from dllm_rl.evaluation import evaluate
    from dllm_rl.models.tiny import TinyDLM
    from dllm_rl.models.tiny_family import make_adapter
    from dllm_rl.pipeline import build_task
    from transformers import PreTrainedTokenizerFast

    best_dir = run_dir / "checkpoints" / "best"  # loads like a Hugging Face folder (dllm-rl evaluate --checkpoint)
    adapter = make_adapter(TinyDLM.from_pretrained(best_dir).eval(), PreTrainedTokenizerFast.from_pretrained(best_dir))
    config = from_dict(RunConfig, result["config"])
    scores = evaluate(adapter, build_task(config), "test", [24], 4, 11)
    assert {k: v for k, v in scores["24"].items() if k != "seconds"} == result["metrics"]["24"]
    final = TinyDLM.from_pretrained(run_dir / "final").state_dict()  # the exported model is the scored one
    assert all(torch.equal(final[k], v) for k, v in adapter.model.state_dict().items())


@pytest.mark.parametrize("setting, needle", [
    ("eval.select=best eval.every=1 eval.val_split=test", "val_split must differ from split"),
    ("eval.select=best eval.every=0", "select=best needs validation during training"),
    ("output.completions=xml", "completions must be jsonl, jsonl.gz or none"),
    ("output.report_to=[nonsense]", "unknown tracker 'nonsense'; valid: all, aim, tensorboard"),
    ("eval.select=worst", "select must be last or best"),
    ("optim.ema_decay=1", "ema_decay must be in [0, 1) (0 = off)"),
])
def test_bad_run_settings_are_one_line(tmp_path, tiny, h, setting, needle):
    sets = [arg for s in setting.split() for arg in ("--set", s)]
    code, err = h.cli(["run", *tiny, *sets, *h.dirs(tmp_path, "c")])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_tuning_on_the_validation_split_is_allowed_when_nothing_is_selected():
    from dllm_rl.config import EvalConfig

    EvalConfig(split="validation", val_split="validation", every=10)  # monitoring, not selection
    with pytest.raises(ValueError, match="select=best"):
        EvalConfig(split="validation", val_split="validation", every=10, select="best")


def test_tensorboard_tracker_gets_the_curve(tmp_path, tiny, h):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, err = h.cli(["train", *tiny, "--set", "output.report_to=[tensorboard]", *h.dirs(tmp_path, "tb")])
    assert code == 0, err
    logs = h.run_dir_of(tmp_path, "tb") / "trackers" / "dllm-rl"
    events = EventAccumulator(str(logs))
    events.Reload()
    rewards = [e.value for e in events.Scalars("reward")]
    curve = [json.loads(line)["reward"] for line in (h.run_dir_of(tmp_path, "tb") / "metrics.jsonl").read_text().splitlines()]
    assert rewards == pytest.approx(curve)


def test_lora_checkpoint_holds_only_adapters_and_restores_them(tmp_path, tiny, h):
    from peft import LoraConfig, get_peft_model

    from dllm_rl.pipeline import build_algorithm, build_task, load_model, resolve_config
    from dllm_rl.trainer import Trainer

    sets = tuple(s for s in tiny if s != "--set") + ("optim.max_steps=1", "optim.lr=0.01")
    run = resolve_config(sets=sets)
    task = build_task(run)

    def trainer():
        adapter = load_model(run, task)
        adapter.model = get_peft_model(adapter.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        return Trainer(run, adapter, task, build_algorithm(run), 24, run_dir=tmp_path / "lora")

    first = trainer()
    first.train()
    path = first.checkpoints.save_step(first._checkpoint_state())
    files = {p.name for p in path.iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    trained = {n: p.detach().clone() for n, p in first.policy.named_parameters() if p.requires_grad}
    assert any(float(p.abs().sum()) > 0 for n, p in trained.items() if "lora_B" in n)  # the adapters moved

    second = trainer()
    second.state = type(second.state)(**second.checkpoints.load(path)["train_state"])
    for n, p in second.policy.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, trained[n]), n
    assert second.state.step == 1
    state1, state2 = first.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(state1[k]["exp_avg"], state2[k]["exp_avg"]) for k in state1)
    ids = torch.tensor([[5, 6, 7, 1, 1]])
    base = load_model(run, task)  # the reference policy is the untouched base: adapters off
    assert torch.equal(second.adapter.reference_logits(ids), base.logits(ids))
    assert not torch.equal(second.adapter.logits(ids), base.logits(ids))


def test_threshold_rollouts_record_their_nfe_per_step(tmp_path, tiny, h):
    """Threshold decoding makes rollout cost vary: every step's NFE is in the curve and the results
    file's rollout_nfe_per_sample is their mean (an unsure model can need more than L/2 passes)."""
    code, err = h.cli(["run", *tiny, "--set", "eval.base=false", "--set", "rollout.threshold=0.5", *h.dirs(tmp_path, "t")])
    assert code == 0, err
    training = h.result_of(tmp_path, "t")["training"]
    per_step = [c["rollout_nfe"] for c in training["curve"]]
    assert len(per_step) == 2 and all(1 <= n <= training["gen_length"] for n in per_step)
    assert training["rollout_nfe_per_sample"] == pytest.approx(sum(per_step) / 2, abs=1e-3)


def test_prompt_cache_rollouts_refreshed_every_pass_equal_plain_rollouts(tmp_path, tiny, h):
    """rollout.prompt_cache reaches the sampler: refreshed at every pass it is a full pass each time,
    so the run equals the uncached one; never refreshed it runs and changes the rollouts."""
    runs = {"plain": [], "every": ["--set", "rollout.prompt_cache=true", "--set", "rollout.prompt_cache_refresh=1"],
            "never": ["--set", "rollout.prompt_cache=true"]}
    curves = {}
    for name, extra in runs.items():
        code, err = h.cli(["run", *tiny, "--set", "eval.base=false", *extra, *h.dirs(tmp_path, name)])
        assert code == 0, err
        curves[name] = h.result_of(tmp_path, name)["training"]["curve"]
    h.close(curves["plain"], curves["every"])
    assert [c["reward"] for c in curves["never"]] != [c["reward"] for c in curves["plain"]]


def test_prompt_cache_is_refused_for_models_that_cannot_reuse_a_prompt():
    import torch.nn as nn

    from dllm_rl.models.adapter import ModelAdapter
    adapter = ModelAdapter(model=nn.Linear(2, 2), tokenizer=None, mask_id=1, eos_id=2, pad_id=0, name="other")
    with pytest.raises(ValueError, match="needs a native model .tiny, llada, dream., not other"):
        adapter.prompt_cache_fns()

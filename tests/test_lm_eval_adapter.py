"""The lm-eval adapter on a tiny model: generation is the toolkit's sampler, loglikelihood is the keyed
ELBO, and an offline lm-eval run on shipped task YAMLs scores exactly our model's outputs."""
import json
import math
import random
from pathlib import Path

import lm_eval.evaluator  # noqa: F401  (a one-time import of several seconds, paid at collection)
import pytest
import torch
from lm_eval.api.instance import Instance

from dllm_rl.config import PretrainConfig
from dllm_rl.diffusion.likelihood import Sequences, elbo_terms
from dllm_rl.diffusion.sampler import SamplerConfig, generate
from dllm_rl.errors import UsageError
from dllm_rl.evaluation import generate_texts
from dllm_rl.lm_eval_adapter import DiffusionLM, LMEvalRequest, parse_limit, run_lm_eval, task_manager
from dllm_rl.models.pretrain import pretrain
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig, build_tokenizer
from dllm_rl.models.tiny_family import make_adapter
from dllm_rl.tasks.sudoku import Sudoku

TASKS = Path(__file__).parent / "fixtures" / "lm_eval"
ROWS = [json.loads(line) for line in (TASKS / "sudoku.jsonl").read_text().splitlines()]


class FixtureSudoku(Sudoku):
    """The shipped puzzles as every split: the tiny model memorises them in a few steps."""

    def examples(self, split):
        return [{"id": f"fixture-{i}", "puzzle": r["puzzle"], "solution": r["solution"]} for i, r in enumerate(ROWS)]


@pytest.fixture(scope="module")
def adapter():
    model = TinyDLM(TinyDLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))
    model.reset_parameters(torch.Generator().manual_seed(0))
    adapter = make_adapter(model, build_tokenizer())
    pretrain(adapter, FixtureSudoku(), PretrainConfig(steps=60, batch_size=16, warmup=10, lr=3e-3), gen_length=24)
    return adapter


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct_elbo(adapter, context, continuation, seed=0, mc=4):
    """The ELBO of one request straight from ``elbo_terms``, with the adapter's documented mask key."""
    ctx = adapter.encode_prompt(context)
    cont = adapter.encode_prompt(continuation)
    seqs = Sequences(prompt_ids=torch.tensor([ctx]), prompt_mask=torch.ones(1, len(ctx), dtype=torch.long),
                     completion_ids=torch.tensor([cont]), rows=torch.zeros(1, dtype=torch.long), num_rows=1)
    with torch.no_grad():
        return elbo_terms(adapter.logits, seqs, adapter.mask_id, (seed, "lm-eval-elbo", len(cont)), num_samples=mc).sum().item()


def test_generate_until_is_the_toolkit_sampler_with_stop_strings(adapter):
    prompts = [r["puzzle"] + "=" for r in ROWS[:5]]
    ours, _, _ = generate_texts(adapter, [adapter.encode_prompt(p) for p in prompts], SamplerConfig(gen_length=24), 5)
    assert all(len(t) >= 8 and t[:8].isdigit() for t in ours)  # the pretrained model writes grids
    for batch_size in (1, 3):
        lm = DiffusionLM(adapter, batch_size=batch_size)
        got = lm.generate_until([request("generate_until", p, {"until": ["\n"], "max_gen_toks": 24}) for p in prompts])
        assert got == ours  # padding and batch composition change nothing
    stop = ours[0][3]
    got = DiffusionLM(adapter).generate_until([request("generate_until", prompts[0], {"until": [stop], "max_gen_toks": 24})])
    assert got == [ours[0].split(stop)[0]] and len(got[0]) < len(ours[0])


def test_generation_settings_follow_the_request(adapter):
    lm = DiffusionLM(adapter, tokens_per_step=1)
    cfg, until = lm.sampler_settings({"until": "Q:", "max_gen_toks": 40, "do_sample": False, "temperature": 0.7})
    assert (cfg.gen_length, cfg.num_steps, cfg.temperature, until) == (40, 40, 0.0, ["Q:"])
    cfg, _ = DiffusionLM(adapter, gen_length=64).sampler_settings({"max_gen_toks": 40, "do_sample": True})
    assert (cfg.gen_length, cfg.num_steps, cfg.temperature) == (64, 32, 1.0)
    texts = [DiffusionLM(adapter, seed=s).generate_until([request("generate_until", ROWS[0]["puzzle"] + "=",
                                                                  {"max_gen_toks": 24, "do_sample": True, "temperature": 1.0})])
             for s in (0, 0)]
    assert texts[0] == texts[1]  # sampling noise is keyed by the seed and the request


def test_loglikelihood_is_the_keyed_elbo_whatever_the_batch(adapter):
    pairs = [(r["puzzle"] + "=", c) for r in ROWS[:3] for c in r["choices"]]
    expected = [direct_elbo(adapter, ctx, cont) for ctx, cont in pairs]
    for batch_size, order in ((1, list(range(9))), (4, random.Random(0).sample(range(9), 9))):
        lm = DiffusionLM(adapter, batch_size=batch_size, mc_samples=4, greedy_check=False)
        got = lm.loglikelihood([request("loglikelihood", *pairs[i]) for i in order])
        for i, (value, greedy) in zip(order, got):
            assert value == pytest.approx(expected[i], abs=1e-4) and greedy is False
    assert all(v < 0 for v in expected)
    other_seed = DiffusionLM(adapter, mc_samples=4, seed=1, greedy_check=False).loglikelihood([request("loglikelihood", *pairs[0])])
    assert other_seed[0][0] != pytest.approx(expected[0], abs=1e-6)


def test_is_greedy_is_llada_one_token_per_step_check(adapter):
    context = ROWS[0]["puzzle"] + "="
    prompt = adapter.encode_prompt(context)
    out = generate(adapter.logits, [prompt], adapter.mask_id, adapter.pad_id,
                   SamplerConfig(gen_length=16, steps=16, block_length=16))
    greedy_text = adapter.tokenizer.decode(out.completions[0].tolist())
    assert len(greedy_text) == 16
    flipped = greedy_text[:-1] + ("1" if greedy_text[-1] != "1" else "2")
    lm = DiffusionLM(adapter, mc_samples=1)
    (_, g1), (_, g2) = lm.loglikelihood([request("loglikelihood", context, greedy_text), request("loglikelihood", context, flipped)])
    assert g1 is True and g2 is False


def test_context_and_continuation_split(adapter):
    lm = DiffusionLM(adapter)
    ctx, cont = lm.encode_pair("Answer: ", "42")
    assert adapter.tokenizer.decode(ctx) == "Answer:" and adapter.tokenizer.decode(cont) == " 42"
    ctx, cont = lm.encode_pair("", "42")
    assert ctx == [lm.prefix_id] and len(cont) == 2
    ctx, _ = DiffusionLM(adapter, max_length=10).encode_pair("x" * 50, "abc")
    assert len(ctx) == 7 and adapter.tokenizer.decode(ctx) == "x" * 7  # cut on the left


def test_loglikelihood_rolling_windows_and_values(adapter):
    text = "1234341221434321"
    lm = DiffusionLM(adapter, mc_samples=2)
    tokens = adapter.encode_prompt(text)
    (whole,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert whole == pytest.approx(lm.elbo([([lm.prefix_id], tokens)])[0], abs=1e-5) and whole < 0
    short = DiffusionLM(adapter, mc_samples=2, max_length=8)
    windows = short.rolling_windows(tokens)
    assert [len(c) for _, c in windows] == [4, 4, 4, 4] and sum((c for _, c in windows), []) == tokens
    assert all(len(ctx) + len(c) <= 8 for ctx, c in windows) and windows[0][0] == [lm.prefix_id]
    assert windows[2][0] == ([lm.prefix_id] + tokens)[5:9]  # conditioned on the preceding tokens
    (chunked,) = short.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert chunked == pytest.approx(sum(short.elbo(windows)), abs=1e-5)


def run_fixture_task(adapter, name):
    lm = DiffusionLM(adapter, batch_size=8, mc_samples=4, greedy_check=False)
    res = run_lm_eval(lm, [name], include=[str(TASKS)], limit=4, log_samples=True, bootstrap_iters=0)
    assert res["n-samples"][name]["effective"] == 4 and res["config"]["dllm_rl_model"] == "tiny"
    return res["results"][name], sorted(res["samples"][name], key=lambda s: s["doc_id"])


def test_offline_lm_eval_generation_task_scores_our_generations(adapter):
    result, samples = run_fixture_task(adapter, "dllm_tiny_sudoku_gen")
    prompts = [adapter.encode_prompt(r["puzzle"] + "=") for r in ROWS[:4]]
    ours, _, _ = generate_texts(adapter, prompts, SamplerConfig(gen_length=24), 4)
    assert [s["resps"][0][0] for s in samples] == [t.split("\n")[0] for t in ours]  # the toolkit's greedy outputs
    assert result["exact_match,none"] == pytest.approx(sum(t == r["solution"] for t, r in zip(ours, ROWS)) / 4)


def test_offline_lm_eval_multiple_choice_task_scores_our_elbos(adapter):
    result, samples = run_fixture_task(adapter, "dllm_tiny_sudoku_mc")
    correct = 0
    for s in samples:
        row = ROWS[s["doc_id"]]
        ours = [direct_elbo(adapter, row["puzzle"] + "=", choice) for choice in row["choices"]]
        assert [r[0][0] for r in s["resps"]] == pytest.approx(ours, abs=1e-4)
        correct += max(range(3), key=ours.__getitem__) == row["label"]
    assert result["acc,none"] == pytest.approx(correct / 4)
    assert correct >= 3  # a model that memorised the grids prefers the real solution


def test_settings_and_registration(adapter):
    from lm_eval.api.registry import get_model

    assert get_model("dllm-rl") is DiffusionLM
    lm = DiffusionLM.create_from_arg_obj({"adapter": adapter, "mc_samples": 3}, {"batch_size": "5", "max_batch_size": None})
    assert (lm.config.mc_samples, lm.config.batch_size) == (3, 5)
    assert lm.max_length == 512  # the tiny model's positions
    with pytest.raises(UsageError, match="unknown setting 'lm-eval.mc_sample'"):
        DiffusionLM(adapter, mc_sample=3)
    with pytest.raises(UsageError, match="mc_samples must be at least 1"):
        DiffusionLM(adapter, mc_samples=0)
    with pytest.raises(UsageError, match="no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])


def test_lm_eval_builds_the_model_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pretrain: {steps: 3, hidden_size: 32, intermediate_size: 64, num_layers: 1}\n"
                      "task: {name: sudoku, params: {train_puzzles_per_grid: 1}}\n")
    lm = DiffusionLM.create_from_arg_string(f"model=tiny,recipe={recipe},mc_samples=2", {"batch_size": 4, "device": None})
    assert lm.adapter.name == "tiny" and lm.adapter.model.config.hidden_size == 32
    assert (lm.config.mc_samples, lm.config.batch_size) == (2, 4)
    with pytest.raises(UsageError, match="not both"):
        DiffusionLM(lm.adapter, model="tiny")


@pytest.mark.parametrize("text, value", [("10", 10), ("0.25", 0.25), (None, None)])
def test_parse_limit(text, value):
    assert parse_limit(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "ten"])
def test_parse_limit_rejects(text):
    with pytest.raises(UsageError, match="--lm-eval-limit"):
        parse_limit(text)


def test_unknown_task_names_get_a_did_you_mean(monkeypatch):
    import lm_eval.tasks

    class Index:  # lm-eval's full index takes tens of seconds to build; its contract is all_tasks
        def __init__(self, include_path=None, include_defaults=True):
            self.all_tasks = (["gsm8k", "gsm8k_cot", "arc_easy"] if include_defaults else []) + (["local_task"] if include_path else [])

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    assert task_manager(["local_task"], [str(TASKS)]).all_tasks == ["local_task"]  # no full index needed
    assert "arc_easy" in task_manager(["local_task", "arc_easy"], [str(TASKS)]).all_tasks
    with pytest.raises(UsageError, match="unknown lm-eval task 'gsm8'") as exc:
        task_manager(["gsm8"], ())
    assert "did you mean 'gsm8k'" in str(exc.value)
    with pytest.raises(UsageError, match="is not a folder"):
        LMEvalRequest.parse("gsm8k", None, ("/nonexistent/tasks",), None, (), None)
    with pytest.raises(UsageError, match="expected an integer"):
        LMEvalRequest.parse("gsm8k", None, (), None, ("mc_samples=many",), None)

"""The lm-eval adapter on a tiny model: generation is the toolkit's sampler, loglikelihood is the keyed
ELBO, and an offline lm-eval run on shipped task YAMLs scores exactly our model's outputs."""
import json
import math
import random
import statistics
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
from dllm_rl.lm_eval_adapter import (DiffusionLM, LMEvalRequest, parse_limit, resolve_device, run_lm_eval,
                                     task_manager)
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


def direct_draws(adapter, context, continuation, seed=0, mc=4):
    """The per-draw ELBO estimates of one request straight from ``elbo_terms``, one draw at a time with
    the adapter's documented mask key (seed, "lm-eval-elbo", L, draw)."""
    ctx = adapter.encode_prompt(context)
    cont = adapter.encode_prompt(continuation)
    seqs = Sequences(prompt_ids=torch.tensor([ctx]), prompt_mask=torch.ones(1, len(ctx), dtype=torch.long),
                     completion_ids=torch.tensor([cont]), rows=torch.zeros(1, dtype=torch.long), num_rows=1)
    with torch.no_grad():
        return [elbo_terms(adapter.logits, seqs, adapter.mask_id, (seed, "lm-eval-elbo", len(cont), m), num_samples=1).sum().item()
                for m in range(mc)]


def direct_elbo(adapter, context, continuation, seed=0, mc=4):
    """The ELBO estimate of one request: the mean of its draws."""
    return statistics.fmean(direct_draws(adapter, context, continuation, seed, mc))


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


def choice_requests(rows):
    """The answer choices of ``rows`` as lm-eval sends a multiple-choice task: one request per choice,
    tagged with its task and question (doc_id)."""
    return [Instance(request_type="loglikelihood", doc={}, arguments=(r["puzzle"] + "=", c), idx=j, metadata=("mc", d, 1))
            for d, r in enumerate(rows) for j, c in enumerate(r["choices"])]


def test_mc_stderr_is_the_standard_error_of_the_draws_and_shrinks_with_more(adapter):
    reqs = choice_requests(ROWS[:2])
    stderr = {}
    for mc in (64, 256):  # enough draws to see the rare heavy ones (a masked count of 1 weighs L+1)
        lm = DiffusionLM(adapter, mc_samples=mc, greedy_check=False)
        lm.loglikelihood(reqs)
        stderr[mc] = [r["stderr"] for r in lm.mc_errors]
        for req, record in zip(reqs[:2], lm.mc_errors):  # by hand: sample std of the per-draw ELBOs / sqrt(draws)
            draws = direct_draws(adapter, *req.args, mc=mc)
            assert record["value"] == pytest.approx(statistics.fmean(draws), abs=1e-4)
            assert record["stderr"] == pytest.approx(statistics.stdev(draws) / math.sqrt(mc), rel=1e-3)
            assert (record["task"], record["doc_id"], record["kind"]) == ("mc", req.doc_id, "loglikelihood")
    assert all(e > 0 for e in stderr[64])
    assert statistics.fmean(stderr[256]) < 0.7 * statistics.fmean(stderr[64])  # ~1/sqrt(draws): 4x the draws, ~1/2 the error
    one = DiffusionLM(adapter, mc_samples=1, greedy_check=False)
    one.loglikelihood(reqs)
    assert math.isnan(one.mc_errors[0]["stderr"])  # one draw cannot measure its own spread
    assert one.mc_summary()["loglikelihood"]["stderr_mean"] is None and one.mc_summary()["loglikelihood"]["close_calls"] is None


def test_mc_summary_compares_the_error_with_the_gaps_between_choices(adapter, caplog):
    reqs = choice_requests(ROWS[:4])
    lm = DiffusionLM(adapter, mc_samples=8, greedy_check=False)
    with caplog.at_level("INFO", logger="dllm_rl.lm_eval_adapter"):
        values = [v for v, _ in lm.loglikelihood(reqs)]
    pairs = [lm.encode_pair(*r.args) for r in reqs]
    draws = lm.elbo_draws(pairs)
    close = 0
    for d in range(4):  # by hand: top two choices, their per-draw differences (common random numbers kept)
        first, second = sorted(range(3 * d, 3 * d + 3), key=lambda i: -values[i])[:2]
        diff = (draws[first] - draws[second]).tolist()
        gap, se = statistics.fmean(diff), statistics.stdev(diff) / math.sqrt(8)
        assert lm.mc_gaps[d]["gap"] == pytest.approx(gap, abs=1e-6) and lm.mc_gaps[d]["stderr"] == pytest.approx(se, rel=1e-6)
        assert gap == pytest.approx(values[first] - values[second], abs=1e-6) and gap >= 0
        close += gap < 2 * se
    summary = lm.get_model_info()["dllm_rl_mc_error"]
    assert summary["mc_samples"] == 8
    ll = summary["loglikelihood"]
    assert (ll["requests"], ll["questions"], ll["close_calls"]) == (12, 4, close)
    assert ll["stderr_max"] == pytest.approx(max(r["stderr"] for r in lm.mc_errors))
    assert f"{close} of 4 questions are close calls" in caplog.text and "mc_samples=8" in caplog.text
    lm.loglikelihood_rolling([request("loglikelihood_rolling", "1234341221434321")])
    rolling = lm.mc_summary()["loglikelihood_rolling"]
    assert rolling["requests"] == 1 and rolling["stderr_mean"] > 0


def test_progress_bars_over_requests(adapter, capsys):
    lm = DiffusionLM(adapter, mc_samples=1)
    gen = [request("generate_until", ROWS[0]["puzzle"] + "=", {"max_gen_toks": 8})]
    lm.generate_until(gen, disable_tqdm=True)
    lm.loglikelihood([request("loglikelihood", "1=", "2")], disable_tqdm=True)
    assert capsys.readouterr().err == ""
    lm.generate_until(gen)
    lm.loglikelihood([request("loglikelihood", "1=", "2")])
    err = capsys.readouterr().err
    assert "Running generate_until requests" in err and "Running loglikelihood requests" in err and "1/1" in err
    assert "Checking is_greedy" in err


def test_device_defaults_to_cuda_when_available_else_cpu(adapter):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():  # lm-eval's command line asks for cuda:0 by default
        assert resolve_device("cuda:0").type == "cpu"
        assert DiffusionLM.create_from_arg_obj({"adapter": adapter}, {"device": "cuda:0"}).device.type == "cpu"
    with pytest.raises(UsageError, match="bad device 'gpu'"):
        DiffusionLM(adapter, device="gpu")
    lm = DiffusionLM.create_from_arg_obj({"adapter": adapter, "device": "cpu"}, {"device": "cuda:0", "batch_size": 1})
    assert lm.device.type == "cpu" and lm.config.batch_size == 1  # model_args win over lm-eval's own, no clash


def test_model_args_arrive_as_strings(adapter):
    lm = DiffusionLM.create_from_arg_obj({"adapter": adapter, "mc_samples": "3", "greedy_check": "false", "gen_length": "none",
                                          "remasking": "random", "seed": "7", "max_batch_size": "64"}, {"batch_size": "auto"})
    assert (lm.config.mc_samples, lm.config.greedy_check, lm.config.gen_length) == (3, False, None)
    assert (lm.config.remasking, lm.config.seed, lm.config.batch_size) == ("random", 7, 16)
    with pytest.raises(UsageError, match="unknown setting 'lm-eval.mc_sample' \\(did you mean 'mc_samples'\\?\\); valid: model, task"):
        DiffusionLM.create_from_arg_obj({"adapter": adapter, "mc_sample": "3"})
    with pytest.raises(UsageError, match="lm-eval.mc_samples: expected an integer, got 'many'"):
        DiffusionLM(adapter, mc_samples="many")


def test_lm_eval_builds_the_model_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pretrain: {steps: 3, hidden_size: 32, intermediate_size: 64, num_layers: 1}\n"
                      "task: {name: sudoku, params: {train_puzzles_per_grid: 1}}\n")
    lm = DiffusionLM.create_from_arg_string(f"model=tiny,recipe={recipe},mc_samples='2'", {"batch_size": 4, "device": None})
    assert lm.adapter.name == "tiny" and lm.adapter.model.config.hidden_size == 32
    assert (lm.config.mc_samples, lm.config.batch_size) == (2, 4)  # '2' stays a string in lm-eval's parsing
    assert lm.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
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

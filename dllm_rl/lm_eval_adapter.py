"""lm-eval model adapter: any lm-eval task scores any dLLM family through the toolkit's own sampler and
likelihood estimator, with no fork of lm-eval.

- ``generate_until``: the masked-diffusion sampler (greedy by default, low-confidence remasking,
  semi-autoregressive blocks, L/2 steps), batched; stop sequences are honoured by truncation.
- ``loglikelihood``: the Monte-Carlo sequence ELBO of the continuation given the context (coupled
  masks keyed by the seed, the continuation length and the draw, so a value depends on nothing but the
  seed and the request), with its Monte-Carlo standard error kept per request (``mc_errors``) and
  summarised (``mc_summary``); ``is_greedy`` by LLaDA's check: greedy one-token-per-step decoding of
  the fully masked continuation reproduces it.
- ``loglikelihood_rolling``: the ELBO of the whole text after a BOS (else EOS) token, in windows of
  half the context length conditioned on the preceding tokens when the text is longer than the
  model's context. An ELBO is a lower bound on log p, so perplexities from it are upper bounds: use
  them to compare dLLMs with one another, not with autoregressive models' exact perplexities.

Usable from Python (``lm_eval.simple_evaluate(model=DiffusionLM(adapter), ...)``), by name after
importing this module (``model="dllm-rl", model_args="model=tiny,task=sudoku"``), from lm-eval's own
command line through ``dllm-rl lm-eval ...`` / ``python -m dllm_rl.lm_eval_cli ...``, and from
``dllm-rl evaluate --lm-eval TASKS``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from .config import from_dict, parse_override
from .diffusion.likelihood import Sequences, elbo_terms
from .diffusion.masking import keyed_generator
from .diffusion.sampler import REMASKING, SamplerConfig, generate, left_pad
from .errors import UsageError
from .evaluation import eval_sampler
from .models.adapter import ModelAdapter
from .atomic import atomic_write_text

log = logging.getLogger(__name__)
SCHEMA = "dllm-rl/lm-eval/v1"
LOAD_ARGS = ("model", "task", "recipe", "device", "trust_remote_code")
"""model_args that pick and place the model rather than configure the adapter."""
IGNORED_ARGS = ("max_batch_size",)
"""model_args lm-eval passes that the adapter has no use for (automatic batch sizing)."""
CLOSE_CALL_Z = 2.0
"""A multiple-choice answer is a close call when its top two choices differ by less than this many
Monte-Carlo standard errors of their difference."""


@dataclass
class LMEvalConfig:
    """How the adapter drives the model; defaults follow the toolkit's evaluation protocol."""

    batch_size: int = 16
    """Requests per forward batch (generation and likelihood alike)."""
    gen_length: int | None = None
    """Tokens generated per request; None = the request's ``max_gen_toks``, else ``default_gen_length``."""
    default_gen_length: int = 256
    block_length: int | None = None
    """Semi-autoregressive block; None = the run's ``rollout.block_length`` (a model preset's: 256 for
    Dream), as every evaluation of the toolkit decodes (``evaluation.eval_sampler``)."""
    tokens_per_step: int = 2
    """Denoising steps = L // tokens_per_step (at least one per block): 2 gives the protocol's L/2 steps."""
    remasking: str = "low_confidence"
    mc_samples: int = 32
    """Monte-Carlo mask draws per loglikelihood request, each scoring a mask and its complement
    (LLaDA's own evaluation used 128 single masks). The standard error falls as 1/sqrt(mc_samples)."""
    greedy_check: bool = True
    """Compute ``is_greedy`` (one extra greedy decode per request); False reports it as False."""
    max_length: int | None = None
    """Context window in tokens; None = the model config's maximum positions, else 4096."""
    add_bos_token: bool = False
    """Prepend BOS to every context (lm-eval's HF models do not by default)."""
    seed: int = 0
    """Keys the likelihood masks and, when a task asks for sampling, the sampling noise."""

    def __post_init__(self):
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        for name in ("batch_size", "default_gen_length", "block_length", "tokens_per_step", "mc_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def split_model_args(model_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loading arguments, ``LMEvalConfig`` settings) of lm-eval model_args, whose values may be the
    strings a command line passes ("64", "true", "none"); an unknown key is one error naming the valid ones."""
    valid = [*LOAD_ARGS, *(f.name for f in dataclasses.fields(LMEvalConfig))]
    load: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in model_args.items():
        if key in IGNORED_ARGS:
            continue
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown setting 'lm-eval.{key}'{hint}; valid: {', '.join(valid)}")
        if isinstance(value, str):
            value = None if value.strip().lower() == "none" else parse_override(f"{key}={value}")[1]
        if key == "batch_size" and isinstance(value, str) and value.startswith("auto"):
            continue  # lm-eval's automatic batch size: keep the configured one
        if key == "trust_remote_code" and not isinstance(value, bool):
            raise UsageError(f"lm-eval.trust_remote_code: expected true or false, got {value!r}")
        if key in LOAD_ARGS and value is not None and not isinstance(value, bool):
            value = str(value)  # a name or path, even one lm-eval read as a number
        (load if key in LOAD_ARGS else settings)[key] = value
    return load, settings


def resolve_device(device: str | None) -> torch.device:
    """The device to run on, as lm-eval's HF model picks it: cuda when available, else cpu; a cuda
    device this machine lacks (lm-eval's command line asks for cuda:0 by default) falls back the same way."""
    default = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if device is None or device in ("", "auto"):
        return default
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"bad device {device!r}: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        log.warning("device %s is not available here; using %s", device, default)
        return default
    return dev


def mc_stderr(draws: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the last dimension (independent Monte-Carlo draws): the
    sample standard deviation over sqrt(draws); NaN with a single draw, where it is undefined."""
    n = draws.shape[-1]
    if n < 2:
        return torch.full(draws.shape[:-1], math.nan, dtype=draws.dtype)
    return draws.std(-1) / math.sqrt(n)


@register_model("dllm-rl", "dllm_rl")
class DiffusionLM(LM):
    """An lm-eval ``LM`` over a toolkit ``ModelAdapter`` (any family: tiny, LLaDA, Dream, ...)."""

    def __init__(self, adapter: ModelAdapter | None = None, config: LMEvalConfig | None = None, run=None,
                 **model_args: Any):
        """Wrap ``adapter``, or load the model family ``model`` for ``task`` (and ``recipe``,
        ``trust_remote_code``) by name; other keyword arguments are ``LMEvalConfig`` fields, as values
        or as command-line strings (``mc_samples=64`` or ``"64"``). ``device`` moves the model; a model
        loaded by name goes to cuda when available, else cpu; a given adapter stays where it is.
        ``run``: the run configuration a given adapter was loaded with (its evaluation decoding)."""
        super().__init__()
        load, settings = split_model_args(model_args)
        device = load.pop("device", None)
        config = config or LMEvalConfig()
        if settings:
            config = from_dict(LMEvalConfig, {**dataclasses.asdict(config), **settings}, "lm-eval")
        self.config = config
        if adapter is not None and load:
            raise UsageError("give either a loaded adapter or model/task/recipe names, not both")
        target = None if adapter is not None and device is None else resolve_device(device)  # checked before loading
        if adapter is None:
            adapter, run = _load_adapter(**load)
        self.run = run
        if target is not None:
            adapter.model.to(target)
        self.adapter = adapter
        self.adapter.model.eval()
        self._device = next(adapter.model.parameters()).device
        self.mc_errors: list[dict[str, Any]] = []
        """Per log-likelihood request: its task, doc_id, kind, value and Monte-Carlo standard error."""
        self.mc_gaps: list[dict[str, Any]] = []
        """Per multiple-choice question: the gap between its top two choices and that gap's standard error."""

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """lm-eval's constructor hook; model_args win over lm-eval's own batch_size/device (whose
        command-line defaults are always set), instead of clashing with them."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def _bar(self, total: int, desc: str, disable: bool) -> tqdm:
        """A progress bar over requests, on the first process only (lm-eval's HF-model convention)."""
        return tqdm(total=total, desc=desc, disable=disable or self.rank != 0)
    # -- tokens ---------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        if self.config.max_length is not None:
            return self.config.max_length
        cfg = getattr(self.adapter.model, "config", None)
        for name in ("max_position_embeddings", "max_sequence_length", "n_positions"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 4096

    @property
    def prefix_id(self) -> int:
        """The token an empty context (or a rolling text) is conditioned on: BOS, else EOS."""
        bos = getattr(self.adapter.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.adapter.eos_id

    def _encode(self, text: str) -> list[int]:
        return self.adapter.encode_prompt(text) if text else []

    def _context(self, text: str) -> list[int]:
        ids = self._encode(text)
        bos = getattr(self.adapter.tokenizer, "bos_token_id", None)
        if self.config.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids or [self.prefix_id]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation), split on the joint tokenisation; trailing spaces of the
        context move to the continuation, as lm-eval's HF models do. The context is cut on the left
        to fit the window."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._context(context)
        whole = self._encode(context + continuation)
        plain = self._encode(context)
        cont = whole[len(plain):] if whole[: len(plain)] == plain else self._encode(continuation)
        if len(cont) >= self.max_length:
            raise UsageError(f"a continuation of {len(cont)} tokens does not fit the model's {self.max_length}-token window")
        return ctx[-(self.max_length - len(cont)):], cont

    # -- likelihood -----------------------------------------------------------------------------
    @torch.no_grad()
    def elbo_draws(self, pairs: list[tuple[list[int], list[int]]], bar: tqdm | None = None) -> torch.Tensor:
        """Monte-Carlo draws [N, mc_samples] (float64, CPU) of the ELBO of each continuation given its
        context: their mean is the estimate, their spread its error. Draw m of a continuation of L
        tokens scores one mask and its complement keyed by (seed, L, m) alone, so each value depends
        only on the seed and its own tokens (not on the batch or the other requests), and continuations
        of equal length share mask draws: common random numbers that sharpen comparisons between
        answer choices."""
        out = torch.zeros(len(pairs), self.config.mc_samples, dtype=torch.float64)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, (_, cont) in enumerate(pairs):
            if cont:
                by_length[len(cont)].append(i)
        if bar is not None:
            bar.update(len(pairs) - sum(map(len, by_length.values())))  # empty continuations: 0 exactly
        dev = self._device
        for length, idxs in by_length.items():
            for start in range(0, len(idxs), self.config.batch_size):
                batch = idxs[start:start + self.config.batch_size]
                prompt_ids, prompt_mask = left_pad([pairs[i][0] for i in batch], self.adapter.pad_id)
                seqs = Sequences(prompt_ids=prompt_ids.to(dev), prompt_mask=prompt_mask.to(dev),
                                 completion_ids=torch.tensor([pairs[i][1] for i in batch], device=dev),
                                 rows=torch.zeros(len(batch), dtype=torch.long), num_rows=1)
                for draw in range(self.config.mc_samples):
                    terms = elbo_terms(self.adapter.logits, seqs, self.adapter.mask_id, self.elbo_key(length, draw), num_samples=1)
                    out[batch, draw] = terms.sum(-1).double().cpu()
                if bar is not None:
                    bar.update(len(batch))
        return out

    def elbo(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """ELBO estimate of each continuation given its context: the mean of its ``elbo_draws``."""
        return self.elbo_draws(pairs).mean(1).tolist()

    def elbo_key(self, length: int, draw: int) -> tuple:
        """The mask key of Monte-Carlo draw ``draw`` for continuations of ``length`` tokens."""
        return (self.config.seed, "lm-eval-elbo", length, draw)

    @torch.no_grad()
    def greedy_matches(self, pairs: list[tuple[list[int], list[int]]], bar: tqdm | None = None) -> list[bool]:
        """Whether greedy decoding of the fully masked continuation, one token per step in one block,
        reproduces it (LLaDA's ``is_greedy``)."""
        out = [True] * len(pairs)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, (_, cont) in enumerate(pairs):
            if cont:
                by_length[len(cont)].append(i)
        if bar is not None:
            bar.update(len(pairs) - sum(map(len, by_length.values())))
        for length, idxs in by_length.items():
            cfg = SamplerConfig(gen_length=length, steps=length, block_length=length, temperature=0.0)
            for start in range(0, len(idxs), self.config.batch_size):
                batch = idxs[start:start + self.config.batch_size]
                res = generate(self.adapter.logits, [pairs[i][0] for i in batch], self.adapter.mask_id, self.adapter.pad_id, cfg)
                for i, row in zip(batch, res.completions.tolist()):
                    out[i] = row == pairs[i][1]
                if bar is not None:
                    bar.update(len(batch))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*req.args) for req in requests]
        with self._bar(len(pairs), "Running loglikelihood requests", disable_tqdm) as bar:
            draws = self.elbo_draws(pairs, bar)
        greedy = [False] * len(pairs)
        if self.config.greedy_check:
            with self._bar(len(pairs), "Checking is_greedy", disable_tqdm) as bar:
                greedy = self.greedy_matches(pairs, bar)
        self.record_mc_errors("loglikelihood", requests, draws)
        results = list(zip(draws.mean(1).tolist(), greedy))
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """(context, chunk) pairs covering ``tokens`` once: one chunk after the prefix token when it
        fits the window, else chunks of half the window, each conditioned on up to the rest of the
        window of preceding tokens."""
        full = [self.prefix_id] + tokens
        size = len(tokens) if len(full) <= self.max_length else self.max_length // 2
        pairs = []
        for start in range(0, len(tokens), max(size, 1)):
            chunk = tokens[start:start + size]
            pairs.append((full[max(0, start + 1 - (self.max_length - len(chunk))):start + 1], chunk))
        return pairs

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows = [self.rolling_windows(self._encode(req.args[0])) for req in requests]
        flat = [pair for w in windows for pair in w]
        with self._bar(len(flat), "Running loglikelihood_rolling requests (windows)", disable_tqdm) as bar:
            draws = self.elbo_draws(flat, bar)
        ends = torch.tensor([len(w) for w in windows], dtype=torch.long).cumsum(0).tolist()
        totals = torch.stack([draws[end - len(w):end].sum(0) for w, end in zip(windows, ends)]) if windows else draws
        self.record_mc_errors("loglikelihood_rolling", requests, totals)  # a text's draws: the sums of its windows'
        results = totals.mean(1).tolist()
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    # -- Monte-Carlo error ----------------------------------------------------------------------
    def record_mc_errors(self, kind: str, requests, draws: torch.Tensor) -> None:
        """Keep each request's Monte-Carlo standard error and, per question with several choices, the
        standard error of the gap between its top two (from the per-draw differences, so the common
        random numbers count); then log the summary so far (the run's, as lm-eval sends every request
        of a kind at once)."""
        values, errors = draws.mean(1).tolist(), mc_stderr(draws).tolist()
        questions: dict[tuple, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            task, doc_id = getattr(req, "task_name", None), getattr(req, "doc_id", None)
            self.mc_errors.append({"kind": kind, "task": task, "doc_id": doc_id, "value": values[i], "stderr": errors[i]})
            if kind == "loglikelihood" and doc_id is not None:
                questions[(task, doc_id)].append(i)
        for (task, doc_id), idxs in questions.items():
            if len(idxs) > 1:
                first, second = sorted(idxs, key=lambda i: -values[i])[:2]
                diff = draws[first] - draws[second]
                self.mc_gaps.append({"task": task, "doc_id": doc_id, "gap": diff.mean().item(), "stderr": mc_stderr(diff).item()})
        for line in self.mc_report():
            log.info("%s", line)

    def mc_summary(self) -> dict[str, Any]:
        """The Monte-Carlo error of the log-likelihoods so far, per request kind: requests, mean and
        largest standard error (nats); for multiple-choice questions also the median top-two gap, the
        mean standard error of that gap, and the close calls (gap under ``CLOSE_CALL_Z`` of its error).
        Standard errors are None with ``mc_samples=1``, where one draw cannot measure its own spread."""
        out: dict[str, Any] = {}
        for kind in ("loglikelihood", "loglikelihood_rolling"):
            errors = [r["stderr"] for r in self.mc_errors if r["kind"] == kind]
            if errors:
                out[kind] = {"requests": len(errors), **_mean_max("stderr", errors)}
        if self.mc_gaps:
            gaps = sorted(g["gap"] for g in self.mc_gaps)
            measured = self.config.mc_samples > 1
            out["loglikelihood"].update(
                questions=len(gaps), gap_median=gaps[len(gaps) // 2], **_mean_max("gap_stderr", [g["stderr"] for g in self.mc_gaps]),
                close_calls=sum(g["gap"] < CLOSE_CALL_Z * g["stderr"] for g in self.mc_gaps) if measured else None)
        return {"mc_samples": self.config.mc_samples, **out} if out else {}

    def mc_report(self) -> list[str]:
        """``mc_summary`` as lines of text for a log or a console."""
        summary, lines = self.mc_summary(), []
        fmt = lambda v: "n/a" if v is None else f"{v:.3g}"
        for kind in ("loglikelihood", "loglikelihood_rolling"):
            s = summary.get(kind)
            if s is None:
                continue
            line = (f"{kind}: Monte-Carlo standard error (mc_samples={summary['mc_samples']}) mean {fmt(s['stderr_mean'])}, "
                    f"max {fmt(s['stderr_max'])} nats over {s['requests']} requests")
            if "questions" in s:
                line += (f"; top-two gap median {fmt(s['gap_median'])} ± {fmt(s['gap_stderr_mean'])} (mean standard error); "
                         f"{'n/a' if s['close_calls'] is None else s['close_calls']} of {s['questions']} questions are close calls "
                         f"(gap under {CLOSE_CALL_Z:g} standard errors: raise mc_samples to settle them)")
            lines.append(line)
        return lines

    # -- generation -----------------------------------------------------------------------------
    def sampler_settings(self, gen_kwargs: dict[str, Any]) -> tuple[SamplerConfig, list[str]]:
        """The sampler config and stop strings of one request's lm-eval generation arguments."""
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = kw.pop("max_gen_toks", None)
        length = self.config.gen_length or (int(max_gen) if max_gen else self.config.default_gen_length)
        do_sample = bool(kw.pop("do_sample", False))
        temperature = kw.pop("temperature", None)
        top_p, top_k = kw.pop("top_p", None), kw.pop("top_k", None)
        if kw:
            log.warning("dllm-rl lm-eval adapter ignores generation arguments %s", sorted(kw))
        if not do_sample:
            temperature, top_p, top_k = 0.0, None, None
        elif temperature is None:
            temperature = 1.0
        cfg = self.sampler_config(length, float(temperature), int(top_k) if top_k else None, float(top_p) if top_p else None)
        return cfg, [s for s in until if s]

    def sampler_config(self, gen_length: int, temperature: float, top_k: int | None, top_p: float | None) -> SamplerConfig:
        """The one place the adapter builds its sampler settings: the toolkit's evaluation decoding
        (``evaluation.eval_sampler`` of the run) with the request's length and sampling, and the
        adapter's blocks, remasking and L / tokens_per_step steps (at least one per block) where set."""
        base = eval_sampler(self.run, gen_length)
        block = self.config.block_length or base.block_length
        steps = None if self.config.tokens_per_step == 2 else \
            max(gen_length // self.config.tokens_per_step, math.ceil(gen_length / block), 1)
        return dataclasses.replace(base, steps=steps, block_length=block, temperature=temperature,
                                   remasking=self.config.remasking, top_k=top_k, top_p=top_p)

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        settings = [self.sampler_settings(req.args[1]) for req in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (cfg, _) in enumerate(settings):
            groups[dataclasses.astuple(cfg)].append(i)
        prompts = [self._context(req.args[0]) for req in requests]
        out = [""] * len(requests)
        with self._bar(len(requests), "Running generate_until requests", disable_tqdm) as bar:
            for idxs in groups.values():
                cfg = settings[idxs[0]][0]
                room = self.max_length - cfg.gen_length
                if room < 1:
                    raise UsageError(f"generation length {cfg.gen_length} leaves no room for a prompt in the model's {self.max_length}-token window")
                idxs = sorted(idxs, key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
                for start in range(0, len(idxs), self.config.batch_size):
                    batch = idxs[start:start + self.config.batch_size]
                    gens = None
                    if cfg.temperature > 0 or cfg.remasking == "random":
                        gens = [keyed_generator(self.config.seed, "lm-eval-generate", i) for i in batch]
                    res = generate(self.adapter.logits, [prompts[i][-room:] for i in batch], self.adapter.mask_id,
                                   self.adapter.pad_id, cfg, gens)
                    for i, row in zip(batch, res.completions):
                        text = self.adapter.decode(row)
                        for stop in settings[i][1]:
                            text = text.split(stop, 1)[0]
                        out[i] = text
                    bar.update(len(batch))
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        tok = self.adapter.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UsageError(f"model {self.adapter.name!r} has no chat template; run lm-eval without apply_chat_template")
        return tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.adapter.tokenizer, "name_or_path", "") or self.adapter.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.adapter.tokenizer, "chat_template", None) or ""

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results ``config`` after the run, so the Monte-Carlo summary lands there too."""
        return {"dllm_rl_model": self.adapter.name, "dllm_rl_adapter": dataclasses.asdict(self.config),
                "dllm_rl_mc_error": self.mc_summary()}


def _mean_max(name: str, values: list[float]) -> dict[str, float | None]:
    """``{name_mean, name_max}`` of ``values`` leaving NaNs out (None when nothing is left)."""
    finite = [v for v in values if not math.isnan(v)]
    return {f"{name}_mean": sum(finite) / len(finite) if finite else None, f"{name}_max": max(finite, default=None)}


def _load_adapter(model: str | None = None, task: str | None = None, recipe: str | None = None,
                  trust_remote_code: bool = False):
    """(adapter, run config) of a model loaded by name."""
    from .pipeline import build_task, load_model, resolve_config

    run = resolve_config(None, task, model, recipe, ("model.trust_remote_code=true",) if trust_remote_code else ())
    return load_model(run, build_task(run)), run


# -- running lm-eval --------------------------------------------------------------------------------

def task_manager(names: list[str], include: list[str] | tuple[str, ...] = ()):
    """A TaskManager that knows ``names``: only the ``include`` folders when they define them all
    (indexing lm-eval's ~15k built-in task files takes tens of seconds), else built-ins too. Unknown
    names fail with one line and a did-you-mean."""
    from lm_eval.tasks import TaskManager

    for folder in include:
        if not Path(folder).is_dir():
            raise UsageError(f"--lm-eval-include {folder!r} is not a folder of lm-eval task YAML files")
    wanted = [n for n in names if not Path(n).is_file()]  # YAML paths load directly
    if include:
        tm = TaskManager(include_path=list(include), include_defaults=False)
        if all(n in tm.all_tasks for n in wanted):
            return tm
    tm = TaskManager(include_path=list(include) or None)
    for name in wanted:
        if name not in tm.all_tasks:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see `lm-eval ls tasks`"
            raise UsageError(f"unknown lm-eval task {name!r}{hint}")
    return tm


def run_lm_eval(lm: DiffusionLM, tasks: list[str], *, limit: int | float | None = None,
                include: list[str] | tuple[str, ...] = (), num_fewshot: int | None = None,
                apply_chat_template: bool | None = None, log_samples: bool = False,
                bootstrap_iters: int = 100000, manager=None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` with the adapter; chat templating follows the model's
    prompt style unless given. lm-eval seeds Python's, NumPy's and torch's global generators itself."""
    import lm_eval

    if not tasks:
        raise UsageError("no lm-eval tasks given; pass a comma-separated list such as gsm8k,arc_easy")
    if apply_chat_template is None:
        apply_chat_template = lm.adapter.prompt_style == "chat"
    manager = manager or task_manager(tasks, include)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                                      limit=limit, num_fewshot=num_fewshot, apply_chat_template=apply_chat_template,
                                      log_samples=log_samples, bootstrap_iters=bootstrap_iters)
    return results


def write_lm_eval_results(path: str | Path, results: dict[str, Any], **extra: Any) -> Path:
    """One atomic JSON file: lm-eval's results (per-sample logs dropped) plus our run details."""
    from lm_eval.utils import handle_non_serializable

    from .pipeline import versions

    body = {k: v for k, v in results.items() if k != "samples"}
    data = {"schema": SCHEMA, **extra, "versions": {**versions(), "lm_eval": _lm_eval_version()}, "lm_eval": body}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=handle_non_serializable) + "\n")
    return Path(path)


def _lm_eval_version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "unknown")


def parse_limit(text: str | None) -> int | float | None:
    """``--lm-eval-limit``: a positive integer count, or a fraction in (0, 1)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value >= 1 and value.is_integer():
        return int(value)
    if 0 < value < 1:
        return value
    raise UsageError(f"bad --lm-eval-limit {text!r}: expected a positive integer or a fraction below 1")


@dataclass
class LMEvalRequest:
    """``dllm-rl evaluate --lm-eval ...``, checked before the model loads (bad input fails fast)."""

    tasks: list[str]
    limit: int | float | None
    num_fewshot: int | None
    settings: dict[str, Any]
    output: str | None
    manager: Any

    @classmethod
    def parse(cls, tasks: str, limit: str | None, include: tuple[str, ...], fewshot: int | None,
              args: tuple[str, ...], output: str | None) -> "LMEvalRequest":
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names:
            raise UsageError("no lm-eval tasks given; pass a comma-separated list such as gsm8k,arc_easy")
        if fewshot is not None and fewshot < 0:
            raise UsageError(f"bad --lm-eval-fewshot {fewshot}: expected 0 or more")
        load, settings = split_model_args(dict(parse_override(a) for a in args))
        misplaced = sorted(set(load) - {"device"})
        if misplaced:
            raise UsageError(f"--lm-eval-arg {misplaced[0]}=... is not an adapter setting; the model comes from --model, --task, --recipe and --checkpoint")
        from_dict(LMEvalConfig, settings, "lm-eval")  # type-check now, before the model loads
        return cls(names, parse_limit(limit), fewshot, {**load, **settings}, output, task_manager(names, include))

    def run(self, adapter: ModelAdapter, run, console, checkpoint: str | None = None) -> Path:
        """Score ``adapter``, write one results JSON atomically, print the metrics; returns the path."""
        from rich.table import Table

        from .results import result_filename

        lm = DiffusionLM(adapter, run=run, **self.settings)
        try:
            results = run_lm_eval(lm, self.tasks, limit=self.limit, num_fewshot=self.num_fewshot, manager=self.manager)
        except OSError as exc:  # typically a task's data set: no network and no cached copy
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"lm-eval could not load its data ({reason}); run once with network access to cache "
                             "the task's data set, or point a task YAML at local files via --lm-eval-include") from None
        output = self.output
        if output is None:
            stem = result_filename(run.model.name, "+".join(Path(t).stem for t in self.tasks), "lm-eval", run.seed)
            output = str(Path(run.output.run_dir) / "lm-eval" / stem)  # not beside results files: another schema
        path = write_lm_eval_results(output, results, model=run.model.name, base_task=run.task.name,
                                     checkpoint=checkpoint, tasks=self.tasks, limit=self.limit,
                                     num_fewshot=self.num_fewshot, adapter_config=dataclasses.asdict(lm.config))
        table = Table(title=f"{run.model.name} on lm-eval ({', '.join(self.tasks)})")
        for col in ("task", "metric", "filter", "value", "stderr"):
            table.add_column(col, justify="right" if col in ("value", "stderr") else "left")
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else str(v)
        for task_name, row in results["results"].items():
            for key, value in row.items():
                metric, _, filt = key.partition(",")
                if filt and not metric.endswith("_stderr"):
                    stderr = row.get(f"{metric}_stderr,{filt}")
                    table.add_row(task_name, metric, filt, fmt(value), "-" if stderr is None else fmt(stderr))
        console.print(table)
        for line in lm.mc_report():
            console.print(line, markup=False, highlight=False)
        console.print(f"results: {path}")
        return path

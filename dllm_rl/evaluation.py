"""Evaluate a model on a task's split under the task's declared protocol (greedy, low-confidence
remasking, blocks of the run's ``rollout.block_length``, L/2 steps, at each protocol length)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from .diffusion.sampler import SamplerConfig, generate
from .models.adapter import ModelAdapter
from .task import Task


def eval_sampler(run=None, length: int = 256) -> SamplerConfig:
    """The one evaluation decoding, used by the trainer's evaluations, ``dllm-rl evaluate`` and the
    lm-eval adapter: greedy, low-confidence remasking, L/2 steps, in blocks of the run's
    ``rollout.block_length`` (a model's preset sets it: 256 for Dream); ``run=None``: blocks of 32."""
    block = 32 if run is None else run.rollout.block_length
    return SamplerConfig(gen_length=length, block_length=block, temperature=0.0, remasking="low_confidence")


def decoding_record(run=None) -> dict[str, Any]:
    """The evaluation decoding as data for results files (``steps`` null = gen_length // 2)."""
    settings = dataclasses.asdict(eval_sampler(run))
    return {k: v for k, v in settings.items() if k not in ("gen_length", "batch_size", "eos_id")}


def generate_texts(adapter: ModelAdapter, prompts: list[list[int]], cfg: SamplerConfig, batch_size: int,
                   generators: list[torch.Generator] | None = None,
                   on_batch=None) -> tuple[list[str], torch.Tensor, int]:
    """Decoded completions, their token ids [N, L] and the NFE per row, generated in batches
    (``on_batch(rows_done, rows)`` after each)."""
    texts, ids, nfe = [], [], 0
    for start in range(0, len(prompts), batch_size):
        gens = None if generators is None else generators[start:start + batch_size]
        out = generate(adapter.logits, prompts[start:start + batch_size], adapter.mask_id, adapter.pad_id, cfg, gens)
        ids.append(out.completions)
        texts.extend(adapter.decode(row) for row in out.completions)
        nfe = out.nfe
        if on_batch is not None:
            on_batch(len(texts), len(prompts))
    return texts, torch.cat(ids), nfe


def evaluate(adapter: ModelAdapter, task: Task, split: str, lengths: list[int], batch_size: int = 128,
             max_examples: int | None = None, run=None, progress=None) -> dict[str, dict[str, float]]:
    """Mean of every metric of ``task.score`` per generation length (decoded by ``eval_sampler(run)``),
    with the primary metric's standard error, the number of examples, NFE per sample and seconds.
    ``progress(done, total)`` is called after each batch (completions over all lengths)."""
    style = adapter.prompt_style
    examples = task.examples(split)[:max_examples]
    prompts = [adapter.encode_prompt(task.prompt(ex, style)) for ex in examples]
    primary = task.protocol(style).primary_metric
    was_training = adapter.model.training
    adapter.model.eval()
    results = {}
    for i, length in enumerate(lengths):
        start = time.perf_counter()
        cfg = eval_sampler(run, length)
        on_batch = None if progress is None else (
            lambda done, n, i=i: progress(i * n + done, n * len(lengths)))
        texts, _, nfe = generate_texts(adapter, prompts, cfg, batch_size, on_batch=on_batch)
        scores = task.scores(examples, texts, style)
        row = {name: sum(s[name] for s in scores) / len(scores) for name in scores[0]}
        p = row[primary]
        row[f"{primary}_stderr"] = math.sqrt(max(p * (1 - p), 0.0) / len(scores)) if 0 <= p <= 1 else 0.0
        row["n"] = len(scores)
        row["nfe"] = nfe
        row["seconds"] = time.perf_counter() - start
        results[str(length)] = row
    adapter.model.train(was_training)
    return results

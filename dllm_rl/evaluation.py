"""Evaluate a model on a task's split under the task's declared protocol (greedy, low-confidence
remasking, blocks of 32, L/2 steps, at each protocol length)."""
from __future__ import annotations

import math
import time

import torch

from .diffusion.sampler import SamplerConfig, generate
from .models.adapter import ModelAdapter
from .task import Task


def generate_texts(adapter: ModelAdapter, prompts: list[list[int]], cfg: SamplerConfig, batch_size: int,
                   generators: list[torch.Generator] | None = None) -> tuple[list[str], torch.Tensor, int]:
    """Decoded completions, their token ids [N, L] and the NFE per row, generated in batches."""
    texts, ids, nfe = [], [], 0
    for start in range(0, len(prompts), batch_size):
        gens = None if generators is None else generators[start:start + batch_size]
        out = generate(adapter.logits, prompts[start:start + batch_size], adapter.mask_id, adapter.pad_id, cfg, gens)
        ids.append(out.completions)
        texts.extend(adapter.decode(row) for row in out.completions)
        nfe = out.nfe
    return texts, torch.cat(ids), nfe


def evaluate(adapter: ModelAdapter, task: Task, split: str, lengths: list[int], batch_size: int = 128,
             max_examples: int | None = None, block_length: int = 32) -> dict[str, dict[str, float]]:
    """Mean of every metric of ``task.score`` per generation length, with the primary metric's
    standard error, the number of examples, NFE per sample and seconds."""
    style = adapter.prompt_style
    examples = task.examples(split)[:max_examples]
    prompts = [adapter.encode_prompt(task.prompt(ex, style)) for ex in examples]
    primary = task.protocol(style).primary_metric
    was_training = adapter.model.training
    adapter.model.eval()
    results = {}
    for length in lengths:
        start = time.perf_counter()
        cfg = SamplerConfig(gen_length=length, block_length=block_length, temperature=0.0)
        texts, _, nfe = generate_texts(adapter, prompts, cfg, batch_size)
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

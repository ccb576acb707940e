"""Supervised masked-diffusion training (the LLaDA SFT objective) on a task's reference answers.

Used to produce the built-in tiny model's base checkpoint; works for any adapter. Per row, l of the
L completion tokens are masked (l uniform in 1..L) and the loss is the negative discrete ELBO
sum_k in masked (L/l) * CE_k / L, averaged over rows. All randomness comes from one generator."""
from __future__ import annotations

import math

import torch

from .tiny_config import PretrainConfig
from ..diffusion.sampler import left_pad
from ..task import Task
from .adapter import ModelAdapter


def sft_loss(adapter: ModelAdapter, prompt_ids, prompt_mask, completion_ids, gen: torch.Generator) -> torch.Tensor:
    """Negative per-token ELBO of a batch of (prompt, completion) pairs under random masks."""
    b, length = completion_ids.shape
    counts = torch.randint(1, length + 1, (b,), generator=gen)
    rank = torch.rand(b, length, generator=gen).argsort(1).argsort(1)
    masked = rank < counts[:, None]
    inputs = torch.cat([prompt_ids, completion_ids.masked_fill(masked, adapter.mask_id)], dim=1)
    attn = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    logits = adapter.logits(inputs, attn)[:, prompt_ids.shape[1]:].float()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), completion_ids.to(logits.device), reduction="none").cpu()
    weight = (length / counts.float())[:, None]
    return (ce * masked * weight).sum() / (b * length)


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then cosine decay to ``cfg.min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(adapter: ModelAdapter, task: Task, cfg: PretrainConfig, gen_length: int, on_step=None) -> list[float]:
    """Train ``adapter.model`` in place on ``task``'s train split; returns the loss of every step."""
    style = adapter.prompt_style
    examples = task.examples("train")
    if cfg.num_examples is not None:
        examples = examples[: cfg.num_examples]
    prompts = [adapter.encode_prompt(task.prompt(ex, style)) for ex in examples]
    answers = torch.tensor([adapter.encode_completion(task.reference(ex, style), gen_length) for ex in examples])
    gen = torch.Generator().manual_seed(cfg.seed)
    model = adapter.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(len(examples), (cfg.batch_size,), generator=gen)
        prompt_ids, prompt_mask = left_pad([prompts[i] for i in idx], adapter.pad_id)
        loss = sft_loss(adapter, prompt_ids, prompt_mask, answers[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses

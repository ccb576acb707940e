"""Target-token log-probs without a full fp32 log-softmax: at a 126k-token vocabulary an fp32 log-softmax over
[rows, positions, V] takes GBs, so forward and backward work on one chunk of rows (~64 MiB fp32) at a time."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _rows(logits: torch.Tensor, flat: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of ``logits`` flattened to [rows, V]; copies just the chunk if there is no view."""
    if flat is not None:
        return flat[start:end]
    index = torch.arange(start, end, device=logits.device)
    return logits[torch.unravel_index(index, logits.shape[:-1])]


def _flat(logits: torch.Tensor) -> torch.Tensor | None:
    """``logits`` as a [rows, V] view, or None where the layout has no such view (no copy is made)."""
    try:
        return logits.view(-1, logits.shape[-1])
    except RuntimeError:
        return None


def _scaled(chunk: torch.Tensor, temperature: float, exclude: int | None) -> torch.Tensor:
    """A fresh fp32 copy of ``chunk`` divided by ``temperature``, with column ``exclude`` at -inf."""
    x = chunk.to(torch.float32, copy=True)
    if temperature != 1.0:
        x.div_(temperature)
    if exclude is not None:
        x[:, exclude] = float("-inf")
    return x


def _chunk_forward(chunk: torch.Tensor, tgt: torch.Tensor, temperature: float,
                   exclude: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(target log-prob, logsumexp) of one chunk of rows, through one fp32 copy of it modified in place."""
    x = _scaled(chunk, temperature, exclude)
    picked = x.gather(1, tgt[:, None]).squeeze(1)
    top = x.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf rows, as logsumexp
    lse = x.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(1))
    return picked - lse, lse


def _chunk_grad(chunk: torch.Tensor, tgt: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
                temperature: float, exclude: int | None) -> torch.Tensor:
    """fp32 ``g * (onehot(tgt) - softmax) / temperature`` of one chunk, zero in column ``exclude``."""
    p = _scaled(chunk, temperature, exclude).sub_(lse[:, None]).exp_()  # softmax, in place
    g = g / temperature
    p.mul_(-g[:, None]).scatter_add_(1, tgt[:, None], g[:, None])
    if exclude is not None:
        p[:, exclude] = 0.0
    return p


def _forward(logits: torch.Tensor, targets: torch.Tensor, temperature: float, exclude: int | None,
             chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per flattened row: (target log-prob, logsumexp), both fp32 [rows]."""
    flat, tgt = _flat(logits), targets.reshape(-1)
    out = torch.empty(tgt.numel(), dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(out)
    for s in range(0, tgt.numel(), chunk_size):
        e = min(s + chunk_size, tgt.numel())
        out[s:e], lse[s:e] = _chunk_forward(_rows(logits, flat, s, e), tgt[s:e], temperature, exclude)
    return out, lse


class _TargetLogprobs(torch.autograd.Function):
    """Chunked target log-prob; saves the input logits (no copy), the targets and the fp32 lse per row."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, exclude, chunk_size):
        out, lse = _forward(logits, targets, temperature, exclude, chunk_size)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.exclude, ctx.chunk_size = temperature, exclude, chunk_size
        return out.view(targets.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        t, exclude = ctx.temperature, ctx.exclude
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        flat, gflat = _flat(logits), grad.view(-1, logits.shape[-1])
        tgt, g = targets.reshape(-1), grad_out.reshape(-1).float()
        for s in range(0, tgt.numel(), ctx.chunk_size):
            e = min(s + ctx.chunk_size, tgt.numel())
            gflat[s:e] = _chunk_grad(_rows(logits, flat, s, e), tgt[s:e], lse[s:e], g[s:e], t, exclude)
        return grad, None, None, None, None


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                    exclude: int | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """fp32 ``log_softmax(logits / temperature)`` (column ``exclude`` removed) at ``targets``, one chunk of
    ``chunk_size`` rows at a time (default: about 2**24 fp32 elements, 64 MiB, per chunk)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape[:-1])}")
    chunk = max(1, 2**24 // logits.shape[-1]) if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = targets.long()
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TargetLogprobs.apply(logits, targets, float(temperature), exclude, chunk)
    return _forward(logits, targets, float(temperature), exclude, chunk)[0].view(targets.shape)

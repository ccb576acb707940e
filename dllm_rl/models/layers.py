"""Building blocks shared by the native LLaDA and Dream models: RMS norm computed in fp32, rotary
position embeddings from padding-aware positions, and bidirectional SDPA attention that hides
padded keys; and the prompt caching that the built-in tiny model shares with them. Module names
live in each family's file (they must match the published checkpoints); only the arithmetic is
shared here."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm with a learned scale (and an optional bias), normalising in fp32 like both reference
    implementations, then casting back before the scale is applied."""

    def __init__(self, size: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if self.bias is None else out + self.bias


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] counted from each row's first real token, so that a left-padded row gets
    the same positions (and logits) as the row alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def head_positions(logits_to_keep: int | slice | torch.Tensor) -> slice | torch.Tensor:
    """The positions the output head runs on, by transformers' ``logits_to_keep`` convention: an int
    n keeps the last n (0 = all), a slice or a 1-d index tensor names them. At a 126k vocabulary the
    head's logits over a whole prompt cost more memory than the model's activations."""
    if isinstance(logits_to_keep, int):
        return slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
    return logits_to_keep


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin [B, 1, T, head_dim] of the rotate-half RoPE convention that LLaDA and Qwen2 share.
    Computed on the fly (no buffer): transformers' meta-device loading leaves non-persistent buffers
    uninitialised."""
    device = position_ids.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = position_ids[:, None, :, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D]; in fp32 (LLaDA's ``rope_full_precision``) or in x's dtype (Qwen2/Dream)."""
    dtype = x.dtype
    if full_precision:
        x = x.float()
    else:
        cos, sin = cos.to(dtype), sin.to(dtype)
    a, b = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-b, a), dim=-1) * sin).to(dtype)


def key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean SDPA mask [B, 1, 1, T] hiding padded keys from every query, or None when nothing is
    padded (lets SDPA pick its fastest kernel). Padded queries still see the real keys, so no row is
    all -inf and no NaN appears; their outputs are never read."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Bidirectional (non-causal) scaled dot-product attention; k/v may have fewer heads (GQA)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False,
                                          enable_gqa=k.shape[1] != q.shape[1])


def extend_kv(k: torch.Tensor, v: torch.Tensor, prefix_kv: tuple[torch.Tensor, torch.Tensor] | None,
              keep: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Prompt caching inside one attention layer: put cached (keys, values) [B, H, P, D] of earlier
    positions before this pass's, and, when ``keep`` > 0, also hand back the first ``keep`` positions'
    (keys, values) for a later pass to reuse."""
    if prefix_kv is not None:
        k, v = torch.cat((prefix_kv[0], k), dim=2), torch.cat((prefix_kv[1], v), dim=2)
    return k, v, ((k[:, :, :keep], v[:, :, :keep]) if keep else None)


class PromptCacheMixin:
    """Approximate prompt caching for a bidirectional model whose ``_run(input_ids, attention_mask,
    prefix=None, keep=0)`` returns (raw logits, kept per-layer (keys, values) or None). With full
    attention a cached prompt is stale once the completion changes (exact only for one layer), so the
    sampler refreshes it every ``rollout.prompt_cache_refresh`` passes; docs/speed.md measures it."""

    @torch.no_grad()
    def prefill_prompt(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, prompt_len: int):
        """Full forward pass: raw logits [B, T, V] and every layer's (keys, values) of the first
        ``prompt_len`` positions, for :meth:`forward_after_prompt`."""
        return self._run(input_ids, attention_mask, keep=prompt_len)

    @torch.no_grad()
    def forward_after_prompt(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, prompt_kv) -> torch.Tensor:
        """Raw logits of the positions after a cached prefix: ``input_ids`` [B, T - P] are those
        positions, ``attention_mask`` [B, T] covers prefix and them; positions count as in a full pass."""
        return self._run(input_ids, attention_mask, prefix=prompt_kv)[0]

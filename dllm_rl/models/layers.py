"""Building blocks shared by the native LLaDA and Dream models: RMS norm computed in fp32, rotary
position embeddings from padding-aware positions, and bidirectional SDPA attention that hides
padded keys. Module names live in each family's file (they must match the published checkpoints);
only the arithmetic is shared here."""
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

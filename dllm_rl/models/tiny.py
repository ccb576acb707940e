"""The built-in tiny masked diffusion LM: a small bidirectional transformer (LLaDA-style, no time
embedding) with a character-level tokenizer, as a transformers ``PreTrainedModel`` so that
save/load, peft and accelerate treat it like a real dLLM."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import MaskedLMOutput

from .layers import PromptCacheMixin, extend_kv, head_positions, positions

SPECIAL_TOKENS = ("<pad>", "<mask>", "<eos>", "<unk>")
CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n",)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus newline, built with `tokenizers`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", mask_token="<mask>", eos_token="<eos>", unk_token="<unk>"
    )


class TinyDLMConfig(PretrainedConfig):
    """Size of the tiny model; the defaults (~0.5M parameters) learn 4x4 Sudoku in minutes on 2 cores."""

    model_type = "dllm_rl_tiny"

    def __init__(self, vocab_size=len(SPECIAL_TOKENS) + len(CHARS), hidden_size=128, num_layers=3,
                 num_heads=4, intermediate_size=256, max_position_embeddings=512, rope_theta=10000.0,
                 mask_token_id=1, pad_token_id=0, eos_token_id=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class _Block(nn.Module):
    """Pre-norm transformer block with full (bidirectional) attention and a SwiGLU MLP."""

    def __init__(self, c: TinyDLMConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.attn_norm = nn.RMSNorm(c.hidden_size, eps=1e-6)
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.mlp_norm = nn.RMSNorm(c.hidden_size, eps=1e-6)
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, h, cos, sin, attn_mask, prefix_kv=None, keep=0):
        """``prefix_kv``: cached (keys, values) of earlier positions that ``h``'s queries also attend
        to; ``keep`` > 0: also return this layer's (keys, values) of the first ``keep`` positions."""
        b, t, d = h.shape
        x = self.attn_norm(h)
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # bf16 weights: rotate in the model's dtype
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v, kept = extend_kv(k, v, prefix_kv, keep)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        x = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)), kept


class TinyDLM(PromptCacheMixin, PreTrainedModel):
    """Bidirectional transformer that predicts the token at every position (no shift), like LLaDA."""

    config_class = TinyDLMConfig
    base_model_prefix = "tiny"
    _no_split_modules = ["_Block"]

    def __init__(self, config: TinyDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=1e-6)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _inv_freq(self, device) -> torch.Tensor:
        # Computed on the fly, not a non-persistent buffer: transformers' from_pretrained leaves
        # such buffers uninitialised (meta-device loading), which silently breaks positions.
        head_dim = self.config.hidden_size // self.config.num_heads
        return 1.0 / (self.config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise all weights from ``generator`` (never from the global RNG): reproducible builds."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * self.config.num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, logits_to_keep: int | slice | torch.Tensor = 0,
                **_) -> MaskedLMOutput:
        """Logits for every position (or those ``logits_to_keep`` names). Padding (attention_mask == 0) is
        hidden from every query and positions count from the first real token, so a left-padded row
        equals the row alone."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits, _ = self._run(input_ids, attention_mask, position_ids, logits_to_keep=logits_to_keep)
        return MaskedLMOutput(logits=logits)

    def _run(self, input_ids, attention_mask, position_ids=None, prefix=None, keep=0, logits_to_keep=0):
        """Logits of ``input_ids``; ``attention_mask`` covers the cached ``prefix`` positions and these."""
        if position_ids is None:
            position_ids = positions(attention_mask)[:, attention_mask.shape[1] - input_ids.shape[1]:]
        freqs = position_ids[:, None, :, None].float() * self._inv_freq(input_ids.device)  # [B,1,T,hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        attn_mask = attention_mask.bool()[:, None, None, :]  # keys; padded queries are ignored downstream
        h = self.embed_tokens(input_ids)
        kept = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, cos, sin, attn_mask, None if prefix is None else prefix[i], keep)
            kept.append(kv)
        return self.lm_head(self.norm(h[:, head_positions(logits_to_keep)])), (kept if keep else None)

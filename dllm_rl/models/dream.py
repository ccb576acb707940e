"""Native Dream (Dream-org/Dream-v0-Instruct-7B) on current transformers: no remote code, SDPA
attention that honours the padding mask, gradient checkpointing, any dtype.

Dream is the Qwen2.5-7B architecture run bidirectionally. Parameter names follow the published
checkpoint (its ``model.safetensors.index.json`` and ``modeling_dream.py`` on the hub), which are
Qwen2's, so its safetensors load with strict key matching::

    model.embed_tokens.weight                                 [vocab_size, hidden_size]
    model.layers.{i}.input_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}     q/k/v carry a bias, o_proj does not
    model.layers.{i}.self_attn.o_proj.weight
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    model.norm.weight
    lm_head.weight                                            (absent when tie_word_embeddings)

Config fields keep the published ``config.json`` names (Qwen2's: hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, rope_theta, rms_norm_eps, ...; model_type
``Dream``); defaults are Dream-v0-7B's values. ``rope_scaling`` other than none and sliding-window
attention are rejected by ``validate`` (the released model uses neither).

Dream keeps the autoregressive model's alignment: the logits at position k-1 predict token k.
This module returns them unshifted, exactly like the reference; ``ModelAdapter(shift_logits=True)``
realigns them so that everything downstream reads position k at k."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput

from .layers import PromptCacheMixin, RMSNorm, apply_rotary, attention, extend_kv, head_positions, key_mask, positions, rotary


class DreamConfig(PretrainedConfig):
    """Dream's ``config.json`` fields (Qwen2 names); defaults are Dream-v0-Instruct-7B's."""

    model_type = "Dream"

    def __init__(self, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=131072,
                 rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, use_sliding_window=False,
                 initializer_range=0.02, tie_word_embeddings=False, mask_token_id=151666,
                 pad_token_id=151643, bos_token_id=151643, eos_token_id=151643, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        if rope_scaling is not None:  # transformers 5 deprecates the attribute; keep it only when a config has one
            self.rope_scaling = rope_scaling
        self.use_sliding_window = use_sliding_window
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ValueError for settings this implementation does not cover."""
        scaling = getattr(self, "rope_scaling", None)
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"Dream config rope_scaling={scaling!r} is not supported (the released model uses none)")
        if self.use_sliding_window:
            raise ValueError("Dream config use_sliding_window=true is not supported (the released model attends to all tokens)")
        if self.hidden_act != "silu":
            raise ValueError(f"Dream config hidden_act={self.hidden_act!r} is not supported (only 'silu')")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("Dream config: hidden_size / num_attention_heads / num_key_value_heads do not divide")


class DreamAttention(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim, self.theta = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rope_theta
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=True)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=True)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=True)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, prefix_kv=None, keep=0):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin, False), apply_rotary(k, cos, sin, False)
        k, v, kept = extend_kv(k, v, prefix_kv, keep)
        return self.o_proj(attention(q, k, v, mask).transpose(1, 2).reshape(b, t, -1)), kept


class DreamMLP(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """Qwen2 decoder layer without the causal mask."""

    def __init__(self, c: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = DreamAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = DreamMLP(c)

    def forward(self, h, cos, sin, mask, prefix_kv=None, keep=0):
        """-> (h, kept (keys, values) of the first ``keep`` positions or None); ``prefix_kv``: cached
        (keys, values) of earlier positions that these queries also attend to (prompt caching)."""
        a, kept = self.self_attn(self.input_layernorm(h), cos, sin, mask, prefix_kv, keep)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), kept


class DreamBackbone(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DreamModel(PromptCacheMixin, PreTrainedModel):
    """Dream as a transformers model: ``forward(input_ids, attention_mask)`` -> raw logits, where
    position k-1 predicts token k (see the module docstring). Padding is hidden from every query and
    positions count from each row's first real token (as Dream's own sampler does)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: DreamConfig):
        config.validate()
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, logits_to_keep: int | slice | torch.Tensor = 0,
                **_) -> MaskedLMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return MaskedLMOutput(logits=self._run(input_ids, attention_mask, position_ids, logits_to_keep=logits_to_keep)[0])

    def _run(self, input_ids, attention_mask, position_ids=None, prefix=None, keep=0, logits_to_keep=0):
        """Raw (unshifted) logits of ``input_ids`` (the last positions of ``attention_mask`` when a
        cached ``prefix`` precedes them) and, with ``keep``, every layer's (keys, values) of the first
        ``keep`` positions."""
        c, m = self.config, self.model
        if position_ids is None:
            position_ids = positions(attention_mask)[:, attention_mask.shape[1] - input_ids.shape[1]:]
        cos, sin = rotary(position_ids, c.head_dim, c.rope_theta)
        mask = key_mask(attention_mask)
        h = m.embed_tokens(input_ids)
        kept = []
        for i, layer in enumerate(m.layers):
            h, kv = layer(h, cos, sin, mask, None if prefix is None else prefix[i], keep)
            kept.append(kv)
        h = m.norm(h[:, head_positions(logits_to_keep)])
        logits = F.linear(h, m.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)
        return logits, (kept if keep else None)

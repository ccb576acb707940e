"""Native LLaDA (GSAI-ML/LLaDA-8B-Instruct, GSAI-ML/LLaDA-1.5) on current transformers: no remote
code, SDPA attention that honours the padding mask, gradient checkpointing, any dtype.

Parameter names follow the published checkpoint (its ``model.safetensors.index.json`` and the
OLMo-derived ``modeling_llada.py`` / ``configuration_llada.py`` on the hub), so its safetensors load
with strict key matching::

    model.transformer.wte.weight                       token embedding [embedding_size, d_model]
    model.transformer.blocks.{i}.attn_norm.weight      RMS norm before attention
    model.transformer.blocks.{i}.q_proj.weight         (k_proj, v_proj: [n_kv_heads*head_dim, d_model])
    model.transformer.blocks.{i}.attn_out.weight       attention output projection
    model.transformer.blocks.{i}.ff_norm.weight        RMS norm before the MLP
    model.transformer.blocks.{i}.ff_proj.weight        SwiGLU gate (the activation is applied to it)
    model.transformer.blocks.{i}.up_proj.weight        SwiGLU up projection
    model.transformer.blocks.{i}.ff_out.weight         MLP down projection
    model.transformer.ln_f.weight                      final RMS norm
    model.transformer.ff_out.weight                    output head (absent when weight_tying)

Config fields keep the published ``config.json`` names (d_model, n_heads, n_kv_heads, n_layers,
mlp_hidden_size, embedding_size, rope_theta, rms_norm_eps, ...); defaults are LLaDA-8B's values.
Only the architecture LLaDA ships is implemented (``block_type: llama``, RMS norms, RoPE, SiLU
gate); other values of those switches are rejected by ``validate``. Dropout fields are read but not
applied: the released configs set them to 0 and RL needs a deterministic forward pass.
LLaDA predicts the token at position k from position k (no shift)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput

from .layers import PromptCacheMixin, RMSNorm, apply_rotary, attention, extend_kv, head_positions, key_mask, positions, rotary


class LLaDAConfig(PretrainedConfig):
    """LLaDA's ``config.json`` fields (published names); defaults are LLaDA-8B-Instruct's."""

    model_type = "llada"

    def __init__(self, d_model=4096, n_heads=32, n_kv_heads=None, n_layers=32, mlp_hidden_size=12288,
                 mlp_ratio=4, vocab_size=126464, embedding_size=126464, max_sequence_length=4096,
                 rope_theta=500000.0, rms_norm_eps=1e-5, include_bias=False, include_qkv_bias=False,
                 bias_for_layer_norm=None, weight_tying=False, activation_type="silu", block_type="llama",
                 layer_norm_type="rms", rope=True, rope_full_precision=True, alibi=False,
                 attention_layer_norm=False, block_group_size=1, input_emb_norm=False, scale_logits=False,
                 mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, **kwargs):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.bias_for_layer_norm = bias_for_layer_norm
        self.weight_tying = weight_tying
        self.activation_type = activation_type
        self.block_type = block_type
        self.layer_norm_type = layer_norm_type
        self.rope = rope
        self.rope_full_precision = rope_full_precision
        self.alibi = alibi
        self.attention_layer_norm = attention_layer_norm
        self.block_group_size = block_group_size
        self.input_emb_norm = input_emb_norm
        self.scale_logits = scale_logits
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)  # tying is LLaDA's own `weight_tying`
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    # helpers (not config.json fields)
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def num_embeddings(self) -> int:
        return self.embedding_size or self.vocab_size

    def validate(self) -> None:
        """Raise ValueError for architecture switches this implementation does not cover."""
        expected = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
                    "alibi": False, "attention_layer_norm": False, "block_group_size": 1,
                    "input_emb_norm": False, "scale_logits": False}
        for key, want in expected.items():
            got = getattr(self, key)
            if str(got) != str(want):
                raise ValueError(f"LLaDA config {key}={got!r} is not supported (only {want!r}, as in the released models)")
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(f"LLaDA config: d_model {self.d_model} / n_heads {self.n_heads} / n_kv_heads {self.kv_heads} do not divide")


def _norm(c: LLaDAConfig) -> RMSNorm:
    bias = c.include_bias if c.bias_for_layer_norm is None else c.bias_for_layer_norm
    return RMSNorm(c.d_model, c.rms_norm_eps, bias=bool(bias))


class LLaDABlock(GradientCheckpointingLayer):
    """LLaDA's 'llama' block: pre-norm bidirectional attention and a SwiGLU MLP (ff_proj is the gate)."""

    def __init__(self, c: LLaDAConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.rope_full_precision = c.rope_full_precision
        qkv_bias = bool(c.include_bias or c.include_qkv_bias)
        self.attn_norm = _norm(c)
        self.ff_norm = _norm(c)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=c.include_bias)
        self.ff_proj = nn.Linear(c.d_model, c.ffn_size, bias=c.include_bias)
        self.up_proj = nn.Linear(c.d_model, c.ffn_size, bias=c.include_bias)
        self.ff_out = nn.Linear(c.ffn_size, c.d_model, bias=c.include_bias)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                prefix_kv=None, keep: int = 0):
        """-> (h, kept (keys, values) of the first ``keep`` positions or None); ``prefix_kv``: cached
        (keys, values) of earlier positions that these queries also attend to (prompt caching)."""
        b, t, _ = h.shape
        x = self.attn_norm(h)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, self.rope_full_precision)
        k = apply_rotary(k, cos, sin, self.rope_full_precision)
        k, v, kept = extend_kv(k, v, prefix_kv, keep)
        a = attention(q, k, v, mask).transpose(1, 2).reshape(b, t, -1)
        h = h + self.attn_out(a)
        x = self.ff_norm(h)
        return h + self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x)), kept


class LLaDAModel(nn.Module):
    """The backbone; its ``transformer`` ModuleDict gives the published ``model.transformer.*`` names."""

    def __init__(self, c: LLaDAConfig):
        super().__init__()
        parts = {"wte": nn.Embedding(c.num_embeddings, c.d_model),
                 "blocks": nn.ModuleList(LLaDABlock(c) for _ in range(c.n_layers)),
                 "ln_f": _norm(c)}
        if not c.weight_tying:
            parts["ff_out"] = nn.Linear(c.d_model, c.num_embeddings, bias=c.include_bias)
        self.transformer = nn.ModuleDict(parts)


class LLaDAModelLM(PromptCacheMixin, PreTrainedModel):
    """LLaDA as a transformers model: ``forward(input_ids, attention_mask)`` -> logits for every
    position (position k predicts token k). Padding (attention_mask == 0) is hidden from every query
    and positions count from each row's first real token: a left-padded row equals the row alone."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig):
        config.validate()
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer["wte"] = value

    def _init_weights(self, module):
        std = getattr(self.config, "init_std", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, logits_to_keep: int | slice | torch.Tensor = 0,
                **_) -> MaskedLMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return MaskedLMOutput(logits=self._run(input_ids, attention_mask, position_ids, logits_to_keep=logits_to_keep)[0])

    def _run(self, input_ids, attention_mask, position_ids=None, prefix=None, keep=0, logits_to_keep=0):
        """Logits of ``input_ids`` (the last positions of ``attention_mask`` when a cached ``prefix``
        precedes them) and, with ``keep``, every block's (keys, values) of the first ``keep`` positions."""
        c, tr = self.config, self.model.transformer
        if position_ids is None:
            position_ids = positions(attention_mask)[:, attention_mask.shape[1] - input_ids.shape[1]:]
        cos, sin = rotary(position_ids, c.head_dim, c.rope_theta)
        mask = key_mask(attention_mask)
        h = tr["wte"](input_ids)
        kept = []
        for i, block in enumerate(tr["blocks"]):
            h, kv = block(h, cos, sin, mask, None if prefix is None else prefix[i], keep)
            kept.append(kv)
        h = tr["ln_f"](h[:, head_positions(logits_to_keep)])
        logits = F.linear(h, tr["wte"].weight) if c.weight_tying else tr["ff_out"](h)
        return logits, (kept if keep else None)

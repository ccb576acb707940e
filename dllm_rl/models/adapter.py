"""One adapter interface that hides per-family quirks (mask id, EOS, chat template, logit shift,
padding, reference policy) from samplers, estimators and trainers."""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field

import torch

from ..task import Prompt


@dataclass
class ModelAdapter:
    """A masked diffusion LM plus what the toolkit needs to know to drive it.

    ``logits`` always returns predictions aligned with positions (row k predicts token k), whatever
    the family does internally (Dream reads position k at k-1)."""

    model: torch.nn.Module
    tokenizer: object
    mask_id: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...] = ()
    """Tokens that end the answer (EOS plus end-of-turn); decoding stops at the first one."""
    shift_logits: bool = False
    prompt_style: str = "direct"
    """``direct`` (a raw model continues the prompt) or ``chat`` (chat template, instruct model)."""
    name: str = "model"
    lora_targets: tuple[str, ...] = ()
    reference_model: torch.nn.Module | None = field(default=None, repr=False)

    # -- forward ------------------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               model: torch.nn.Module | None = None, logits_to_keep: int | slice = 0) -> torch.Tensor:
        """Position-aligned logits [B, T, V] of ``model`` (default: the policy), or of the positions
        ``logits_to_keep`` names (an int n: the last n, 0 = all; or a slice of positions). Native
        models run their output head on those positions only; others are sliced afterwards."""
        model = model or self.model
        device = next(model.parameters()).device
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        t = input_ids.shape[1]
        if isinstance(logits_to_keep, int):
            start, stop = (t - logits_to_keep, t) if 0 < logits_to_keep <= t else (0, t)
        else:
            start, stop, step = logits_to_keep.indices(t)
            if step != 1:
                raise ValueError(f"logits_to_keep must be an int or a slice of consecutive positions, got {logits_to_keep}")
        if self.shift_logits:  # prediction for position k is read at k-1; position 0 reads its own
            raw = slice(max(start - 1, 0), max(stop - 1, 1))
        else:
            raw = slice(start, stop)
        kwargs = {"logits_to_keep": raw} if (start, stop) != (0, t) and takes_logits_to_keep(model) else {}
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask, **kwargs).logits
        if not kwargs:
            out = out[:, raw]
        if self.shift_logits and start == 0:
            out = torch.cat([out[:, :1], out], dim=1)[:, :stop]
        return out

    def prompt_cache_fns(self):
        """(prefill, after_prompt) for the sampler's prompt caching (:func:`prompt_cache_fns`), or a
        ValueError naming the model when it cannot reuse a prompt's keys and values."""
        model = self.model
        while not hasattr(model, "prefill_prompt"):  # through DDP (.module) and peft (.get_base_model())
            if "FullyShardedDataParallel" in type(model).__name__:
                raise ValueError("rollout.prompt_cache does not work with FSDP-sharded models")
            if hasattr(model, "module"):
                model = model.module
            elif hasattr(model, "get_base_model"):
                model = model.get_base_model()
            else:
                raise ValueError(f"rollout.prompt_cache needs a native model (tiny, llada, dream), not {self.name}")
        return prompt_cache_fns(model, self.shift_logits)

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         logits_to_keep: int | slice = 0) -> torch.Tensor:
        """Logits of the frozen reference policy: the LoRA base with adapters off, or a frozen copy."""
        with self.reference():
            return self.logits(input_ids, attention_mask, model=self.reference_model or self.model,
                               logits_to_keep=logits_to_keep)

    @contextlib.contextmanager
    def reference(self):
        """Context in which ``self.model`` (or ``reference_model``) computes the reference policy."""
        if self.reference_model is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def freeze_reference(self) -> None:
        """Keep the starting weights as the reference policy (full fine-tuning without LoRA)."""
        if self.reference_model is None and not hasattr(self.model, "disable_adapter"):
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self.reference_model = ref

    # -- text ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: plain text for direct style, the chat template for chat style."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_completion(self, text: str, length: int) -> list[int]:
        """A completion as exactly ``length`` ids: the text, one stop token, then EOS padding."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])[: length - 1]
        return ids + [self.eos_id] * (length - len(ids))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of a completion up to its first stop token."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        stops = set(self.stop_ids) | {self.eos_id}
        for i, t in enumerate(ids):
            if t in stops:
                ids = ids[:i]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/FSDP (``.module``) and peft (``.get_base_model()``) wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes transformers' ``logits_to_keep`` (wrappers pass it through)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def prompt_cache_fns(model: torch.nn.Module, shift_logits: bool = False):
    """The sampler's (prefill, after_prompt) for a model with ``prefill_prompt`` / ``forward_after_prompt``
    (:class:`~dllm_rl.models.layers.PromptCacheMixin`), both returning position-aligned logits.

    ``prefill(ids, mask, prompt_len)`` -> (logits [B, T, V], cache); ``after_prompt(ids, mask, cache)``
    -> logits [B, T - P, V] of the completion, computed over the positions after the cache only. A
    shifted-logit model (Dream: position k-1 predicts k) caches all but the last prompt position, whose
    output predicts the first completion token and so must be recomputed with the completion."""
    device = next(model.parameters()).device
    back = 1 if shift_logits else 0

    def prefill(ids, mask, prompt_len):
        if prompt_len - back < 1:
            raise ValueError("prompt caching a shifted-logit model needs prompts of at least 2 tokens")
        out, cache = model.prefill_prompt(ids.to(device), mask.to(device), prompt_len - back)
        if shift_logits:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out, cache

    def after_prompt(ids, mask, cache):
        out = model.forward_after_prompt(ids[:, cache[0][0].shape[2]:].to(device), mask.to(device), cache)
        return out[:, :-1] if shift_logits else out
    return prefill, after_prompt

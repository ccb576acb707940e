"""The ``llada``, ``dream`` and generic ``hf`` model families: find the checkpoint (alias -> hub id,
hub cache, or local folder), load tokenizer and weights (strict key matching for the native models),
resolve the special-token ids from the tokenizer, add LoRA or a trained adapter, and hide the
family's quirks (mask id, end-of-turn tokens, chat template, Dream's logit shift) behind a
``ModelAdapter``. Special tokens are looked up by their text, so the released tokenizers (LLaDA:
mask 126336, <|endoftext|> 126081, <|eot_id|> 126348; Dream: mask 151666, <|endoftext|> 151643,
<|im_end|> 151645) and small test tokenizers with the same tokens at other ids both work."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..config import RunConfig
from ..errors import UsageError
from ..task import STYLES
from . import lora
from .adapter import ModelAdapter

# Chat formats of the released tokenizers (used only when a checkpoint's tokenizer has no template).
# LLaDA-8B-Instruct: Llama-3 headers, turns closed by <|eot_id|>, BOS once at the start.
LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Dream-v0-Instruct-7B: Qwen2.5's ChatML with its default system turn.
DREAM_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class FamilySpec:
    """What a family knows that a checkpoint folder does not say (or says in a family-specific way)."""

    name: str
    model_types: tuple[str, ...] = ()
    """config.json ``model_type`` values this family's native code implements."""
    model_class: Any = None
    """Native PreTrainedModel class; None = a transformers Auto class (generic family)."""
    mask_token: str | None = None
    eos_token: str | None = "<|endoftext|>"
    stop_tokens: tuple[str, ...] = ()
    """End-of-turn tokens that also end an answer."""
    shift_logits: bool = False
    lora_targets: tuple[str, ...] = ()
    chat_template: str | None = None
    tokenizer_class: str | None = None
    """transformers tokenizer class for folders whose tokenizer needs remote code (Dream's)."""
    prompt_style: str = "chat"
    auto_class: str | None = None
    mask_id: int | None = None

    def with_card(self, card: dict[str, Any]) -> "FamilySpec":
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(card) - known)
        if bad:
            raise UsageError(f"model card key(s) {', '.join(bad)} unknown; valid: {', '.join(sorted(known - {'name', 'model_class', 'model_types'}))}")
        updates = {k: tuple(v) if isinstance(v, list) else v for k, v in card.items()}
        return dataclasses.replace(self, **updates)


def _llada_spec() -> FamilySpec:
    from .llada import LLaDAModelLM

    return FamilySpec("llada", ("llada",), LLaDAModelLM, mask_token="<|mdm_mask|>", stop_tokens=("<|eot_id|>",),
                      shift_logits=False, lora_targets=("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
                      chat_template=LLADA_CHAT_TEMPLATE)


def _dream_spec() -> FamilySpec:
    from .dream import DreamModel

    return FamilySpec("dream", ("Dream",), DreamModel, mask_token="<|mask|>", stop_tokens=("<|im_end|>",),
                      shift_logits=True, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                      chat_template=DREAM_CHAT_TEMPLATE, tokenizer_class="Qwen2Tokenizer")


NATIVE = {"llada": _llada_spec, "dream": _dream_spec}


# -- finding the checkpoint ---------------------------------------------------------------------

def reference_of(run: RunConfig, entry: registry.Entry) -> str:
    """The hub id or folder to load: ``model.path``, else the name itself (``hf:X``, a folder, a hub
    id), else the alias's hub id."""
    name = run.model.name
    if run.model.path:
        return run.model.path
    if name.startswith(registry.HUB_PREFIX):
        return name[len(registry.HUB_PREFIX):]
    if name == entry.name:
        hub_id = entry.info.get("hub_id")
        if not hub_id:
            raise UsageError(f"model {name!r} needs a checkpoint: --model hf:ORG/NAME or --set model.path=DIR")
        return hub_id
    return name


def checkpoint_folder(ref: str, revision: str | None = None, with_code: bool = False) -> Path:
    """A local folder holding checkpoint ``ref``: the folder itself, or the hub snapshot (downloaded
    if needed, reused from the HF cache otherwise). Offline with no copy: one clear UsageError."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if ref.startswith(("/", ".", "~")) or ref.count("/") != 1:
        raise UsageError(f"model folder {ref!r} does not exist (and it is not a hub id of the form ORG/NAME)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"] + (["*.py"] if with_code else [])
    try:
        return Path(snapshot_download(ref, revision=revision, allow_patterns=patterns))
    except (OSError, HfHubHTTPError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "offline mode (HF_HUB_OFFLINE) is on" if offline else f"the hub cannot be reached or refused ({type(exc).__name__})"
        raise UsageError(
            f"model {ref!r} is not in the local Hugging Face cache and {why}. Download it where there is network "
            f"(`hf download {ref}`, or `huggingface-cli download {ref} --local-dir DIR`), then either pass "
            f"--model /path/to/DIR (or --set model.path=DIR) or copy the HF cache here and point HF_HOME at it "
            f"with HF_HUB_OFFLINE=1") from None


def _config_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"model folder {str(folder)!r} has no config.json") from None
    except ValueError:
        raise UsageError(f"{str(folder / 'config.json')!r} is not valid JSON") from None


# -- tokenizer, dtype, special tokens ----------------------------------------------------------

def resolve_dtype(name: str) -> torch.dtype:
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in choices:
        raise UsageError(f"model.dtype {name!r} unknown; valid: auto, {', '.join(choices)}")
    return choices[name]


def load_tokenizer(folder: Path, spec: FamilySpec, trust_remote_code: bool):
    """The checkpoint's tokenizer; folders whose tokenizer class is remote code (Dream's) fall back to
    the standard class of the same vocabulary, so no hub code runs."""
    import transformers
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as first:  # noqa: BLE001 - any failure falls through to the family's class
        cls = getattr(transformers, spec.tokenizer_class or "PreTrainedTokenizerFast")
        try:
            tok = cls.from_pretrained(str(folder))
        except Exception:  # noqa: BLE001
            raise UsageError(f"cannot load the tokenizer in {str(folder)!r}: {str(first).splitlines()[0]}") from None
    if getattr(tok, "chat_template", None) is None and spec.chat_template:
        tok.chat_template = spec.chat_template
    return tok


def token_id(tokenizer, token: str | None) -> int | None:
    """Id of special token ``token`` in ``tokenizer``, or None when the vocabulary lacks it."""
    if not token:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def _first(*values) -> int | None:
    for v in values:
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


@dataclass
class SpecialIds:
    mask: int
    eos: int
    pad: int
    stops: tuple[int, ...] = field(default=())


def special_ids(tokenizer, config, spec: FamilySpec, override_mask: int | None, vocab: int, what: str) -> SpecialIds:
    """Mask, EOS, pad and stop ids, looked up by token text first (family-generic), then from the config."""
    mask = _first(override_mask, spec.mask_id, token_id(tokenizer, spec.mask_token), getattr(config, "mask_token_id", None),
                  tokenizer.mask_token_id)
    if mask is None:
        raise UsageError(f"no mask token known for {what}: add a model card entry (mask_token) in registry.yaml "
                         "or pass --set model.mask_id=N")
    eos = _first(token_id(tokenizer, spec.eos_token), getattr(config, "eos_token_id", None), tokenizer.eos_token_id)
    if eos is None:
        raise UsageError(f"no end-of-sequence token known for {what}: add eos_token to its model card in registry.yaml")
    pad = _first(tokenizer.pad_token_id, getattr(config, "pad_token_id", None), eos)
    stops = [eos] + [t for t in (token_id(tokenizer, s) for s in spec.stop_tokens) if t is not None]
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    for label, tid in (("mask", mask), ("end-of-sequence", eos)):
        if not 0 <= tid < vocab:
            raise UsageError(f"{label} token id {tid} of {what} is outside its vocabulary of {vocab} embeddings")
    if mask == eos:
        raise UsageError(f"mask token id {mask} of {what} equals its end-of-sequence id; set model.mask_id")
    return SpecialIds(mask, eos, pad, tuple(dict.fromkeys(stops)))


# -- weights --------------------------------------------------------------------------------------

def _device_map() -> dict[str, str] | None:
    return {"": "cuda"} if torch.cuda.is_available() else None


def load_native(spec: FamilySpec, folder: Path, dtype: torch.dtype):
    """Native model from ``folder`` with strict key matching: a missing, unexpected or mis-shaped
    tensor is an error naming it, not a silently re-initialised weight."""
    model_type = _config_json(folder).get("model_type")
    if model_type not in spec.model_types:
        raise UsageError(f"{str(folder)!r} holds a {model_type!r} checkpoint, not {spec.name} "
                         f"(model_type {', '.join(spec.model_types)}); choose its family with --model")
    try:  # mis-shaped tensors are reported in ``info`` (refused below) instead of a multi-line RuntimeError
        model, info = spec.model_class.from_pretrained(str(folder), dtype=dtype, device_map=_device_map(),
                                                       output_loading_info=True, ignore_mismatched_sizes=True)
    except ValueError as exc:
        raise UsageError(f"cannot build {spec.name} from {str(folder)!r}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the weights in {str(folder)!r}: {str(exc).splitlines()[0]}") from None
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:  # transformers gives (name, checkpoint shape, model shape)
        first = mismatched[0]
        if isinstance(first, tuple) and len(first) == 3:
            what = f"{first[0]} has shape {list(first[1])} in the checkpoint, the model expects {list(first[2])}"
        else:
            what = f"{first} has the wrong shape"
        more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UsageError(f"{spec.name} checkpoint {str(folder)!r} does not match the model: tensor {what}{more}")
    for kind in ("missing_keys", "unexpected_keys"):
        bad = sorted(map(str, info.get(kind) or ()))
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            raise UsageError(f"{spec.name} checkpoint {str(folder)!r} does not match the model: "
                             f"{kind.replace('_', ' ')} {', '.join(bad[:3])}{more}")
    return model


def load_auto(spec: FamilySpec, folder: Path, dtype: torch.dtype, trust_remote_code: bool, what: str):
    """A model through a transformers Auto class; remote code only with the explicit opt-in."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = _config_json(folder)
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(f"{what} needs Python code shipped with the checkpoint (config.json auto_map); "
                         "rerun with --trust-remote-code if you trust its authors")
    name = spec.auto_class or ("AutoModelForMaskedLM" if config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "AutoModel")
    cls = getattr(transformers, name, None)
    if cls is None or not name.startswith("Auto"):
        raise UsageError(f"model card auto_class {name!r} is not a transformers Auto class")
    try:
        return cls.from_pretrained(str(folder), dtype=dtype, device_map=_device_map(), trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise UsageError(f"cannot load {what} with {name}: {str(exc).splitlines()[0]}") from None


# -- the adapter ----------------------------------------------------------------------------------

def finish(model, tokenizer, run: RunConfig, spec: FamilySpec, name: str, what: str) -> ModelAdapter:
    """Gradient checkpointing, LoRA or a trained adapter, special ids and the adapter."""
    m = run.model
    style = m.prompt_style or spec.prompt_style
    if style not in STYLES:
        raise UsageError(f"model.prompt_style {style!r} unknown; valid: {', '.join(STYLES)}")
    if style == "chat" and getattr(tokenizer, "chat_template", None) is None:
        raise UsageError(f"{what} has no chat template: set model.prompt_style=direct or add chat_template to its model card")
    vocab = model.get_input_embeddings().num_embeddings
    ids = special_ids(tokenizer, model.config, spec, m.mask_id, vocab, what)
    if m.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = tuple(m.lora_targets or spec.lora_targets)
    if m.adapter:
        model = lora.load_adapter(model, m.adapter, trainable=True)
        targets = tuple(sorted(model.peft_config["default"].target_modules or ()))
    elif m.lora:
        if not targets:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in lora.adaptable_names(model)})
            raise UsageError(f"no default LoRA targets for {what}: set model.lora_targets (valid module names: {', '.join(leaves)})")
        model = lora.apply_lora(model, targets, m.lora_r, m.lora_alpha, m.lora_dropout, what)
    shift = spec.shift_logits if m.shift_logits is None else m.shift_logits
    return ModelAdapter(model=model.eval(), tokenizer=tokenizer, mask_id=ids.mask, eos_id=ids.eos, pad_id=ids.pad,
                        stop_ids=ids.stops, shift_logits=shift, prompt_style=style, name=name, lora_targets=targets)


def _load(run: RunConfig, family: str) -> ModelAdapter:
    entry = registry.model(run.model.name)
    ref = reference_of(run, entry)
    spec = NATIVE[family]().with_card(registry.model_cards().get(ref, {}))
    folder = checkpoint_folder(ref, run.model.revision)
    tokenizer = load_tokenizer(folder, spec, trust_remote_code=False)
    model = load_native(spec, folder, resolve_dtype(run.model.dtype))
    return finish(model, tokenizer, run, spec, run.model.name, f"{spec.name} checkpoint {ref!r}")


def load_llada(run: RunConfig, task=None, progress=None) -> ModelAdapter:
    """LLaDA-8B-Instruct / LLaDA-1.5 / any LLaDA checkpoint folder, with native code."""
    return _load(run, "llada")


def load_dream(run: RunConfig, task=None, progress=None) -> ModelAdapter:
    """Dream-v0-Instruct-7B / any Dream checkpoint folder, with native code."""
    return _load(run, "dream")


def load_hf(run: RunConfig, task=None, progress=None) -> ModelAdapter:
    """Any dLLM: ``hf:ORG/NAME`` or ``hf:/folder``. LLaDA and Dream checkpoints use the native code;
    others load through a transformers Auto class (their own code only with --trust-remote-code).
    Mask token, shift, stop tokens and chat template come from registry.yaml ``model_cards``."""
    entry = registry.model(run.model.name)
    ref = reference_of(run, entry)
    trust = run.model.trust_remote_code
    folder = checkpoint_folder(ref, run.model.revision, with_code=trust)
    config = _config_json(folder)
    cards = registry.model_cards()
    card = cards.get(ref) or cards.get(str(config.get("model_type"))) or {}
    dtype = resolve_dtype(run.model.dtype)
    what = f"hub model {ref!r}"
    for build in NATIVE.values():
        spec = build()
        if config.get("model_type") in spec.model_types:
            spec = spec.with_card(card)
            return finish(load_native(spec, folder, dtype), load_tokenizer(folder, spec, False), run, spec, run.model.name, what)
    spec = FamilySpec("hf", eos_token=None).with_card(card)
    tokenizer = load_tokenizer(folder, spec, trust)
    if "prompt_style" not in card and run.model.prompt_style is None:
        spec = dataclasses.replace(spec, prompt_style="chat" if getattr(tokenizer, "chat_template", None) else "direct")
    model = load_auto(spec, folder, dtype, trust, what)
    with torch.no_grad():
        probe = model(input_ids=torch.tensor([[0]], device=next(model.parameters()).device))
    if getattr(probe, "logits", None) is None:
        raise UsageError(f"{what} returns no logits through {type(model).__name__}; set auto_class in its model card "
                         "(e.g. AutoModelForMaskedLM)")
    return finish(model, tokenizer, run, spec, run.model.name, what)

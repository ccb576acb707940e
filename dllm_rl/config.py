"""Typed run configuration: dataclasses with defaults, YAML recipes, ``--set key=value`` overrides.

Layers, later wins: dataclass defaults (the papers' values) < registry presets for the chosen
model/task/algorithm < recipe file < ``--set``. Every value is type-checked; errors are one line."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .diffusion.sampler import REMASKING, DecodingConfig
from .checks import at_least, in_unit_interval, positive
from .errors import UsageError
from .models.tiny_config import PretrainConfig


DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """Which model to load and how: a family or alias (``tiny``, ``llada``, ``llada-1.5``, ``dream``),
    ``hf:ORG/NAME``, or a local checkpoint folder; dtype, LoRA and memory options."""

    name: str = "tiny"
    path: str | None = None
    """A local folder or hub id that replaces the alias's checkpoint (e.g. ``--model llada --set
    model.path=/data/LLaDA-8B-Instruct``)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to download."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run the checkpoint's own Python code (generic ``hf:`` family only); off unless asked for."""
    gradient_checkpointing: bool = False
    lora: bool = False
    """Train LoRA adapters instead of all weights; the reference policy is the base (adapters off)."""
    lora_r: int = 128
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    disable_dropout: bool = True
    """Dropout (LoRA's included) off in every forward pass of training: rollouts and the old, current and
    reference likelihoods. Otherwise theta = theta_old gives a log-ratio that is dropout noise, not 0,
    and the ratio and its clip see that noise (TRL's GRPO disables it the same way)."""
    lora_targets: list[str] | None = None
    """Module names to adapt; None = the family's defaults. Names that match no module are an error."""
    adapter: str | None = None
    """A trained LoRA adapter folder loaded on top of the base model (evaluation, or more training)."""
    mask_id: int | None = None
    """Override the mask token id (generic ``hf:`` models without a model card)."""
    shift_logits: bool | None = None
    """Override whether position k-1 predicts token k (Dream-style); None = the family's or card's."""
    prompt_style: str | None = None
    """direct or chat; None = the family's default (chat for instruct checkpoints)."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        at_least(self, 1, "lora_r")
        positive(self, "lora_alpha")
        in_unit_interval(self, "lora_dropout")
        at_least(self, 0, "mask_id")
        if self.prompt_style not in (None, "direct", "chat"):
            raise ValueError(f"prompt_style must be direct or chat (or null = the family's), got {self.prompt_style!r}")


@dataclass
class RolloutConfig(DecodingConfig):
    """How rollouts are sampled: the decoding settings (``DecodingConfig``'s fields and checks: steps,
    block_length, temperature, remasking, top_k, top_p, threshold, prompt_cache, prompt_cache_refresh,
    batch_size) plus the batch shape, length and early stop. ``SamplerConfig.of(rollout, L, eos)``
    is the sampler; evaluations decode greedily with its ``block_length`` (``evaluation.eval_sampler``)."""

    num_prompts: int = 16
    """Prompts per rollout batch; each gets group_size completions."""
    group_size: int = 6
    gen_length: int | None = None
    """None = the task protocol's training length."""
    temperature: float = 0.9
    early_stop: bool = False
    """Stop a row once its remaining masked positions all follow a committed block containing EOS,
    filling them with EOS (exact whenever the model would decode EOS there)."""

    def __post_init__(self):
        at_least(self, 1, "num_prompts", "gen_length")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (advantages compare completions of one prompt), "
                             f"got {self.group_size}")
        super().__post_init__()
        if self.gen_length is not None:
            self.check_steps(self.gen_length)


LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class OptimConfig:
    max_steps: int = 100
    """Rollout batches (outer RL steps)."""
    lr: float = 3e-6
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 0.2
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many optimizer steps (rollout steps x mu), then constant."""
    lr_schedule: str = "constant"
    """After the warm-up: constant, or a cosine / linear decay to 0 at ``max_steps``."""
    micro_batch_size: int = 64
    skip_zero_rows: bool = True
    """Skip the forward and backward passes of rows whose loss term is exactly zero (the algorithm says
    which, e.g. zero advantage without a KL term). Same update up to float rounding; one process only."""
    ema_decay: float = 0.0
    """Exponential moving average of the trainable weights, updated after every optimizer step (0 = off):
    validation, the final evaluation and the exported model use the average, rollouts the live policy.
    Its horizon is about 1 / (1 - decay) optimizer steps (mu per rollout batch). One process or DDP."""

    def __post_init__(self):
        at_least(self, 1, "max_steps", "micro_batch_size")
        at_least(self, 0, "weight_decay")
        positive(self, "lr", "grad_clip")
        in_unit_interval(self, "beta1", "beta2")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 (0 = no warm-up), got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on the validation split every N steps (0 = never during training)."""
    split: str = "test"
    val_split: str = "validation"
    lengths: list[int] | None = None
    """None = the task protocol's lengths."""
    batch_size: int = 128
    max_examples: int | None = None
    base: bool = True
    """Also score the untrained base model under the same protocol (the delta row)."""
    select: str = "last"
    """Weights the final evaluation scores: ``last`` (end of training) or ``best`` (highest validation
    score; needs ``every`` > 0). Selection only ever looks at ``val_split``, never at ``split``."""

    def __post_init__(self):
        at_least(self, 0, "every")
        at_least(self, 1, "batch_size", "max_examples")
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 1):
            raise ValueError(f"lengths must be a non-empty list of positive lengths (or null = the task's), got {self.lengths}")
        if self.select not in ("last", "best"):
            raise ValueError(f"select must be last or best, got {self.select!r}")
        if self.select == "best" and self.every <= 0:
            raise ValueError("select=best needs validation during training (every > 0, e.g. eval.every=20); "
                             "select=last scores the last weights")
        if self.select == "best" and self.val_split == self.split:
            raise ValueError(f"val_split must differ from split ({self.split!r}) with select=best: "
                             "a checkpoint is never selected on the split it is scored on")


@dataclass
class OutputConfig:
    results_dir: str = "runs/results"
    """Where the results file goes (``runs/`` is git-ignored: a user's runs never touch committed results)."""
    run_dir: str = "runs"
    checkpoint_every: int = 0
    """Write a full-state checkpoint (weights, optimizer, RNG, step, curve) every N steps (0 = never)."""
    keep_checkpoints: int = 2
    """Retention: keep the last K step checkpoints (0 = keep all); the best-validation one is kept apart."""
    save_model: bool = True
    label: str = ""
    """Name of a configuration variant (e.g. k1): part of the results file name and shown by compare,
    which averages seeds of the same model + algorithm + label."""
    completions: str = "jsonl"
    """Per-step log of prompts, completions, rewards and advantages: jsonl, jsonl.gz or none."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers through accelerate, e.g. [tensorboard] or [wandb] (one name alone works too)."""

    def __post_init__(self):
        if self.completions not in ("jsonl", "jsonl.gz", "none"):
            raise ValueError(f"completions must be jsonl, jsonl.gz or none, got {self.completions!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 0")


@dataclass
class PluginRef:
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    task: PluginRef = field(default_factory=lambda: PluginRef("sudoku"))
    algorithm: PluginRef = field(default_factory=lambda: PluginRef("espo"))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """The tiny family's base-model pretraining (``models.tiny_config``); other families ignore it."""


# -- building dataclasses from plain data ---------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float allowed), or raise UsageError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UsageError:
                pass
        raise UsageError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item is str:  # one name for a list of names: report_to=tensorboard
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UsageError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial, nested) mapping, checking every value."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            raise UsageError(f"unknown setting {path!r}; valid: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where or cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a nested configuration as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting where a saved configuration and a new one
    differ, sorted by key. A setting ``old`` lacks (it predates the option) counts as its value in
    ``defaults`` (default: ``RunConfig()``'s), so adding an option does not invalidate saved runs."""
    a, b = flatten(old), flatten(new)
    d = flatten(to_dict(RunConfig()) if defaults is None else defaults)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not (k not in a and k in d and b.get(k) == d[k])]


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; ``algorithm.x`` and ``task.x`` go to the plugin's params."""
    parts = dotted.split(".")
    if len(parts) >= 2 and parts[0] in ("algorithm", "task") and parts[1] not in ("name", "params"):
        parts = [parts[0], "params", *parts[1:]]
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UsageError(f"cannot set {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``1e-4``, ``true``, ``[128, 256]``)."""
    if "=" not in text:
        raise UsageError(f"bad --set {text!r}: expected key=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if _looks_float(value):  # YAML 1.1 reads "1e-4" as a string
        value = float(value)
    return key.strip(), value


def _looks_float(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return any(c in value.lower() for c in ".e")


RECIPES = Path(__file__).with_name("recipes")


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped in ``dllm_rl/recipes`` (usable as ``--recipe NAME``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe: a YAML file, or the name of a packaged recipe (e.g. ``llada-8b-espo-countdown``)."""
    if not Path(path).exists() and (RECIPES / f"{Path(path).stem}.yaml").is_file() and Path(path).parent == Path("."):
        path = RECIPES / f"{Path(path).stem}.yaml"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe file {str(path)!r} does not exist; packaged recipes: {', '.join(packaged_recipes())}") from None
    except UnicodeDecodeError:
        raise UsageError(f"recipe file {str(path)!r} is not text (not UTF-8); a recipe is a YAML mapping of settings") from None
    except IsADirectoryError:
        raise UsageError(f"recipe {str(path)!r} is a folder; expected a YAML file") from None
    except OSError as exc:
        raise UsageError(f"recipe file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe file {str(path)!r} must be a mapping of settings")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts (``update`` wins); dotted keys in ``update`` are expanded."""
    out = copy.deepcopy(base)
    for key, value in copy.deepcopy(update).items():
        if "." in key:
            set_path(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out

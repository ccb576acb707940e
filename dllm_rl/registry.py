"""Name -> plugin resolution for algorithms, tasks and models.

Built-ins come from ``registry.yaml`` (shipped inside the package); third-party packages add
plugins through entry points in the groups ``dllm_rl.algorithms``, ``dllm_rl.tasks`` and
``dllm_rl.models``. Targets are imported lazily, only when used."""
from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

KINDS = ("algorithms", "tasks", "models")
REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@dataclass
class Entry:
    name: str
    kind: str
    target: str  # "module:attr"
    source: str  # "built-in" or "entry point (distribution)"
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    """Other keys of the registry.yaml entry (models: ``hub_id``, ``family``, ``model_types``)."""

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"{self.kind[:-1]} {self.name!r} ({self.source}) cannot be loaded from {self.target!r}: {exc}") from None
        return obj


@functools.lru_cache(maxsize=1)
def _builtin() -> dict[str, Any]:
    return yaml.safe_load(REGISTRY_FILE.read_text())


def entries(kind: str) -> dict[str, Entry]:
    """All plugins of ``kind``: built-ins first, then entry points (which may not shadow built-ins)."""
    found: dict[str, Entry] = {}
    for name, spec in (_builtin().get(kind) or {}).items():
        found[name] = Entry(name, kind, spec["target"], "built-in", spec.get("description", ""), spec.get("defaults") or {},
                            {k: v for k, v in spec.items() if k not in ("target", "description", "defaults")})
    for ep in metadata.entry_points(group=f"dllm_rl.{kind}"):
        if ep.name in found:
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown package"
        found[ep.name] = Entry(ep.name, kind, ep.value, f"entry point ({dist})")
    return found


def get(kind: str, name: str) -> Entry:
    """The entry called ``name``, or a UsageError listing the valid names with a did-you-mean."""
    table = entries(kind)
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown {kind[:-1]} {name!r}.{hint} Valid: {', '.join(sorted(table))}")


def presets(model: str, task: str, algorithm: str, family: str | None = None) -> list[dict[str, Any]]:
    """Settings from registry.yaml presets whose ``match`` fits this model/task/algorithm, in file order.
    A ``model`` match also fits the model's family (``llada`` presets apply to ``llada-1.5``); a match
    value may be a list of names (any of them fits)."""
    chosen = {"model": {model, family or model}, "task": {task}, "algorithm": {algorithm}}
    out = []
    for preset in _builtin().get("presets") or []:
        if all(set(v if isinstance(v, list) else [v]) & chosen.get(k, set()) for k, v in preset["match"].items()):
            out.append(preset["set"])
    return out


# -- models: aliases, hub ids, local folders --------------------------------------------------------

HUB_PREFIX = "hf:"


def model_cards() -> dict[str, dict[str, Any]]:
    """registry.yaml ``model_cards``: per-checkpoint facts for the generic ``hf:`` family."""
    return dict(_builtin().get("model_cards") or {})


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def model(name: str) -> Entry:
    """The model family entry for ``name``: a registered name (``tiny``, ``llada``, ``dream``, ...),
    ``hf:ORG/NAME`` (the generic hub family), a registered checkpoint's hub id, or a local folder
    (its family read from ``config.json``'s ``model_type``)."""
    table = entries("models")
    if name in table:
        return table[name]
    if name.startswith(HUB_PREFIX):
        if not name[len(HUB_PREFIX):].strip():
            raise UsageError("--model hf: needs a hub id or a folder after it, e.g. hf:Dream-org/Dream-v0-Instruct-7B")
        return table["hf"]
    for entry in table.values():
        if entry.info.get("hub_id") == name:
            return entry
    if _looks_like_path(name):
        return family_of_folder(Path(name).expanduser(), table)
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown model {name!r}.{hint} Valid: {', '.join(sorted(table))}, "
                     "hf:ORG/NAME for another hub model, or the path of a local model folder")


def family_of_folder(path: Path, table: dict[str, Entry] | None = None) -> Entry:
    """The family of a local checkpoint folder, from ``config.json``'s ``model_type``; unknown types
    go to the generic ``hf`` family."""
    import json

    table = table if table is not None else entries("models")
    if not path.is_dir():
        raise UsageError(f"model folder {str(path)!r} does not exist")
    config = path / "config.json"
    if not config.is_file():
        if (path / "adapter_config.json").is_file():
            raise UsageError(f"{str(path)!r} holds a LoRA adapter, not a model: pass it with --adapter and "
                             "choose the base model with --model")
        raise UsageError(f"model folder {str(path)!r} has no config.json; expected a transformers checkpoint folder")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise UsageError(f"{str(config)!r} is not a valid JSON config") from None
    for entry in table.values():
        if model_type in (entry.info.get("model_types") or ()):
            return entry
    return table["hf"]

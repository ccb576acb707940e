"""Name -> plugin resolution for algorithms, tasks and models.

Built-ins come from ``registry.yaml`` (shipped inside the package); third-party packages add
plugins through entry points in the groups ``dllm_rl.algorithms``, ``dllm_rl.tasks`` and
``dllm_rl.models``. Targets are imported lazily, only when used. A plugin's description and presets
come from its target (``description`` / ``presets`` attributes, else its docstring's first line); a
name defined twice (an entry point reusing a built-in's or another package's) is an error when used.
See docs/plugins.md."""
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
    duplicates: list[str] = field(default_factory=list)
    """Packages whose entry points define this name too (ignored, and an error when the name is used)."""

    @property
    def builtin(self) -> bool:
        return self.source == "built-in"

    def conflict(self) -> str | None:
        """The one-line error for a name defined twice, or None."""
        if not self.duplicates:
            return None
        others = ", ".join(repr(d) for d in self.duplicates)
        return (f"{self.kind[:-1]} {self.name!r} is defined twice: {self.source} and an entry point of package "
                f"{others} (group dllm_rl.{self.kind}); rename that entry point or uninstall the package")

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # a plugin's import may fail in any way (syntax, a missing name, its own checks)
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
            raise UsageError(f"{self.kind[:-1]} {self.name!r} ({self.source}) cannot be loaded from {self.target!r}: {why}") from None
        return obj


@functools.lru_cache(maxsize=1)
def _builtin() -> dict[str, Any]:
    return yaml.safe_load(REGISTRY_FILE.read_text())


def entries(kind: str) -> dict[str, Entry]:
    """All plugins of ``kind``: built-ins first, then entry points. An entry point reusing a name keeps
    the first definition and is recorded in its ``duplicates`` (see :meth:`Entry.conflict`)."""
    found: dict[str, Entry] = {}
    for name, spec in (_builtin().get(kind) or {}).items():
        found[name] = Entry(name, kind, spec["target"], "built-in", spec.get("description", ""), spec.get("defaults") or {},
                            {k: v for k, v in spec.items() if k not in ("target", "description", "defaults")})
    for ep in metadata.entry_points(group=f"dllm_rl.{kind}"):
        dist = ep.dist.name if ep.dist is not None else "unknown package"
        if ep.name not in found:
            found[ep.name] = Entry(ep.name, kind, ep.value, f"entry point ({dist})")
        elif found[ep.name].target != ep.value and dist not in found[ep.name].duplicates:
            found[ep.name].duplicates.append(dist)
    return found


def _usable(entry: Entry) -> Entry:
    if entry.conflict():
        raise UsageError(entry.conflict())
    return entry


def get(kind: str, name: str) -> Entry:
    """The entry called ``name``, or a UsageError listing the valid names with a did-you-mean (or saying
    that the name is defined twice)."""
    table = entries(kind)
    if name in table:
        return _usable(table[name])
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown {kind[:-1]} {name!r}.{hint} Valid: {', '.join(sorted(table))}")


def describe(entry: Entry) -> str:
    """The one line ``dllm-rl list`` shows: registry.yaml's description, else the target's ``description``
    attribute, else the first line of its own docstring (an entry point names no description)."""
    if entry.description:
        return entry.description
    try:
        target = entry.load()
    except UsageError as exc:
        return f"(cannot be loaded: {exc})"
    text = getattr(target, "description", "") or (target.__doc__ or "")
    return text.strip().split("\n")[0].strip()


MATCH_KEYS = {"model", "task", "algorithm"}


def _fits(match: dict[str, Any], chosen: dict[str, set[str]]) -> bool:
    return all(set(v if isinstance(v, list) else [v]) & chosen.get(k, set()) for k, v in match.items())


def _valid_preset(preset: Any) -> bool:
    if not isinstance(preset, dict) or set(preset) - {"match", "set"} or not isinstance(preset.get("set"), dict):
        return False
    match = preset.get("match") or {}
    return isinstance(match, dict) and set(match) <= MATCH_KEYS


def plugin_presets(entry: Entry) -> list[dict[str, Any]]:
    """The ``presets`` attribute of an entry point's target: ``[{"match": {...}, "set": {...}}]`` as in
    registry.yaml (``match`` optional; the plugin being chosen is implied), checked to be that shape."""
    found = getattr(entry.load(), "presets", None) or []
    where = f"{entry.kind[:-1]} {entry.name!r} ({entry.source})"
    if not isinstance(found, (list, tuple)):
        raise UsageError(f"{where}: presets must be a list of {{'match': {{...}}, 'set': {{...}}}}, got {type(found).__name__}")
    for preset in found:
        if not _valid_preset(preset):
            raise UsageError(f"{where}: each preset must be {{'match': {{model/task/algorithm: NAME or [NAMES]}}, "
                             f"'set': {{'section.key': value}}}}, got {preset!r}")
    return list(found)


def presets(model: str, task: str, algorithm: str, family: str | None = None) -> list[dict[str, Any]]:
    """Settings of the presets whose ``match`` fits this model/task/algorithm, to merge in order (later
    wins): registry.yaml's in file order, then those of the chosen entry-point plugins (task, algorithm,
    model), so a plugin's own presets override the built-in ones and a recipe and ``--set`` override both.
    A ``model`` match also fits the model's family (``llada`` presets apply to ``llada-1.5``); a match
    value may be a list of names (any of them fits)."""
    chosen = {"model": {model, family or model}, "task": {task}, "algorithm": {algorithm}}
    out = [p["set"] for p in _builtin().get("presets") or [] if _fits(p["match"], chosen)]
    for kind, name in (("tasks", task), ("algorithms", algorithm), ("models", model)):
        entry = entries(kind).get(name)
        if entry is not None and not entry.builtin:
            out += [p["set"] for p in plugin_presets(entry) if _fits(p.get("match") or {}, chosen)]
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
        return _usable(table[name])
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

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
        found[name] = Entry(name, kind, spec["target"], "built-in", spec.get("description", ""), spec.get("defaults") or {})
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


def presets(model: str, task: str, algorithm: str) -> list[dict[str, Any]]:
    """Settings from registry.yaml presets whose ``match`` fits this model/task/algorithm, in file order."""
    chosen = {"model": model, "task": task, "algorithm": algorithm}
    out = []
    for preset in _builtin().get("presets") or []:
        if all(chosen.get(k) == v for k, v in preset["match"].items()):
            out.append(preset["set"])
    return out

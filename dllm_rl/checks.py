"""Range checks of config dataclasses, raising the ValueError that config building turns into one
line naming the key (shared by the core config, model families and plugin configs)."""
from __future__ import annotations

from typing import Any


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """ValueError naming the first field of ``names`` below ``minimum`` (None = unset, allowed)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def positive(obj: Any, *names: str) -> None:
    """ValueError naming the first field of ``names`` that is not > 0."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be greater than 0, got {value}")


def in_unit_interval(obj: Any, *names: str) -> None:
    """ValueError naming the first field of ``names`` outside [0, 1)."""
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")

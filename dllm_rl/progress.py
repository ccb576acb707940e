"""Progress of a run's long phases (pretraining, base evaluation, RL steps, validation, final
evaluation), one bar each, for the command line and the Python API alike.

On a terminal the bars are live (rich); piped or logged output gets a plain line when a phase ends
and every ``LOG_EVERY`` RL steps, so batch logs show progress too."""
from __future__ import annotations

import sys
import time
from typing import Any

LOG_EVERY = 10


class Bar:
    """One phase's bar: ``advance``/``update`` while it runs, ``finish`` when it ends."""

    def __init__(self, owner: "RunProgress", name: str, total: int | None):
        self.owner, self.name, self.total = owner, name, total
        self.started = time.perf_counter()
        self.done = 0
        self.task = owner.rich.add_task(name, total=total) if owner.rich is not None else None

    def update(self, completed: int | None = None, advance: int = 0, description: str | None = None,
               total: int | None = None) -> None:
        self.done = completed if completed is not None else self.done + advance
        self.total = total if total is not None else self.total
        if self.task is not None:
            self.owner.rich.update(self.task, completed=self.done, total=self.total, description=description or self.name)

    def __call__(self, done: int, total: int) -> None:
        """As an evaluation's ``progress(done, total)`` callback."""
        self.update(completed=done, total=total)

    def finish(self, summary: str = "") -> None:
        seconds = time.perf_counter() - self.started
        if self.task is not None:
            self.owner.rich.update(self.task, completed=self.total if self.total is not None else self.done)
        if not self.owner.live:
            self.owner.log(f"{self.name}: done in {seconds:.0f}s{f' ({summary})' if summary else ''}")


class RunProgress:
    """Bars on a rich ``Progress`` (the CLI passes its own; the Python API gets one on stderr), or
    silent (``enabled=False``, and on every process but the main one)."""

    def __init__(self, rich=None, enabled: bool = True, console=None):
        self.enabled = enabled
        self._own = None
        if enabled and rich is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            console = console or Console(stderr=True)
            rich = self._own = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                        disable=not (console.is_terminal or console.is_jupyter))
        self.rich = rich if enabled else None
        self.console = None if self.rich is None else self.rich.console
        self.live = self.console is not None and (self.console.is_terminal or self.console.is_jupyter)

    def __enter__(self) -> "RunProgress":
        if self._own is not None:
            self._own.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._own is not None:
            self._own.stop()

    def bar(self, name: str, total: int | None) -> Bar:
        return Bar(self, name, total)

    def log(self, line: str) -> None:
        if self.console is not None:
            self.console.print(line, markup=False, highlight=False)
        elif self.enabled:
            print(line, file=sys.stderr)

    def step_line(self, bar: Bar, step: int, metrics: dict[str, Any], shown: tuple[str, ...]) -> None:
        """The live line of RL step ``step`` (0-based): reward, the algorithm's own metrics, |g|, time."""
        parts = [f"reward {metrics['reward']:.3f}"]
        for name in shown:
            if name in metrics and isinstance(metrics[name], (int, float)):
                parts.append(f"{name} {_fmt(metrics[name])}")
        parts += [f"|g| {metrics.get('grad_norm', float('nan')):.2f}", f"{metrics['seconds']:.1f}s/step"]
        bar.update(completed=step + 1, description=f"RL step {step + 1}: " + " ".join(parts))
        if not self.live and ((step + 1) % LOG_EVERY == 0 or step == 0):
            self.log(f"step {step + 1}/{bar.total} " + " ".join(parts))


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3f}"

"""The task plugin contract: data for a split, a prompt, a reward, a metric and an evaluation protocol."""
from __future__ import annotations

import abc
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

Example = dict[str, Any]
"""One problem. Always has a string ``"id"`` that is unique within the task (it keys sampler noise)."""

Prompt = str | list[dict[str, str]]
"""``"direct"`` style: a plain string the model continues. ``"chat"`` style: chat messages."""


@dataclass
class EvalProtocol:
    """How a task is evaluated, declared so that every run of every method uses the same one."""

    lengths: tuple[int, ...]
    """Generation lengths L to evaluate at; the first is also the training rollout length."""
    primary_metric: str = "accuracy"
    """The metric shown in leaderboards."""
    split: str = "test"
    shots: int = 0
    prompt: str = ""
    """How the prompt is built, in a line (recorded with results so runs can be compared)."""
    parser: str = ""
    """How the answer is read from a completion and judged, in a line."""


@dataclass
class TaskConfig:
    """Base of every task's config; subclasses add their own typed fields."""

    seed: int = 0
    """Seed of the task's data generator or of its shuffles; fixed splits do not depend on the run seed."""


class Task(abc.ABC):
    """A task: examples per split, prompts in a given style, reward for training, metrics for evaluation."""

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    description: ClassVar[str] = ""
    """One line for ``dllm-rl list`` (plugins); empty = the first line of the class's own docstring."""
    presets: ClassVar[list[dict[str, Any]]] = []
    """Settings a plugin brings when it is chosen, as registry.yaml's: ``[{"match": {"model": "tiny"},
    "set": {"pretrain.steps": 300}}]`` (``match`` optional). They override the built-in presets and are
    overridden by a recipe and ``--set``; see docs/plugins.md."""

    def __init__(self, config: TaskConfig | None = None):
        self.config = config if config is not None else self.Config()

    @abc.abstractmethod
    def examples(self, split: str) -> list[Example]:
        """All examples of ``split`` in a fixed order (deterministic for the task config)."""

    @abc.abstractmethod
    def prompt(self, example: Example, style: str) -> Prompt:
        """The prompt for ``example``: ``style`` is ``"direct"`` (bare answer) or ``"chat"`` (instruct model)."""

    @abc.abstractmethod
    def reward(self, example: Example, completion: str, style: str) -> float:
        """Training reward of a decoded completion (special tokens already stripped)."""

    @abc.abstractmethod
    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        """Evaluation metrics of one completion; must contain ``protocol(style).primary_metric``."""

    def rewards(self, examples: list[Example], completions: list[str], style: str) -> list[float]:
        """Rewards of many completions at once; tasks that execute code override it to run them in parallel."""
        return [self.reward(ex, text, style) for ex, text in zip(examples, completions)]

    def scores(self, examples: list[Example], completions: list[str], style: str) -> list[dict[str, float]]:
        """Metrics of many completions at once (same override point as :meth:`rewards`)."""
        return [self.score(ex, text, style) for ex, text in zip(examples, completions)]

    @abc.abstractmethod
    def protocol(self, style: str) -> EvalProtocol:
        """The evaluation protocol for a prompt style."""

    def reference(self, example: Example, style: str) -> str:
        """A correct completion, used to pretrain the built-in tiny model (supervised masked diffusion)."""
        raise NotImplementedError(f"task {type(self).__name__} has no reference completions")


STYLES = ("direct", "chat")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # DOTALL: d1's regex missed multi-line answers


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid styles: {', '.join(STYLES)}")


def extract_answer(completion: str, style: str) -> str | None:
    """The answer text: the whole completion (direct style) or the last ``<answer>`` block (chat)."""
    check_style(style)
    if style == "direct":
        return completion
    matches = _ANSWER_TAG.findall(completion)
    return matches[-1] if matches else None


def answer_region(completion: str, style: str) -> str:
    """Where a free-form answer is read: the last ``<answer>`` block (chat), else the whole completion."""
    tagged = extract_answer(completion, style)
    return completion if tagged is None else tagged


def keyed_random(*key: object) -> random.Random:
    """A ``random.Random`` seeded from a key (stable across processes, unlike ``hash``): data generators
    derive one per split/item so that each example depends only on its own key."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))

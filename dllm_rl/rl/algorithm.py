"""The algorithm plugin contract: advantages, cached old/reference quantities, and a loss."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import RolloutConfig
from ..models.adapter import ModelAdapter
from .advantages import BASELINES, group_advantages
from .rollout import RolloutBatch


@dataclass
class AlgorithmConfig:
    """Options every algorithm has; subclasses add theirs with defaults from their paper."""

    mu: int = 1
    """Policy updates (optimizer steps) per rollout batch."""
    baseline: str = "group_mean"
    """Advantage baseline: group_mean or leave_one_out."""
    scale_adv_by_std: bool = False
    """Divide advantages by the group's reward std (GRPO's original form)."""
    negative_weight: float = 1.0
    """Weight of negative advantages (1 = symmetric; below 1 pushes wrong completions' likelihood down less)."""

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.mu < 1:
            raise ValueError("mu must be at least 1")
        if self.negative_weight < 0:
            raise ValueError(f"negative_weight must be >= 0 (1 = symmetric, 0 = positive advantages only), got {self.negative_weight}")


class Algorithm(abc.ABC):
    """An RL objective. The trainer calls ``advantages`` once per rollout batch, ``prepare`` once
    (no grad: old-policy and reference quantities for all ``mu`` iterations), then ``loss`` for every
    micro-batch of every iteration. ``loss`` returns this micro-batch's share of the full-batch loss."""

    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    description: ClassVar[str] = ""
    """One line for ``dllm-rl list`` (plugins); empty = the first line of the class's own docstring."""
    presets: ClassVar[list[dict[str, Any]]] = []
    """Settings a plugin brings when it is chosen, as registry.yaml's: ``[{"match": {"task": "sudoku"},
    "set": {"algorithm.mu": 2}}]`` (``match`` optional). They override the built-in presets and are
    overridden by a recipe and ``--set``; see docs/plugins.md."""

    def __init__(self, config: AlgorithmConfig | None = None, seed: int = 0):
        self.config = config if config is not None else self.Config()
        self.seed = seed
        self.rollout = RolloutConfig()
        """The sampling settings of the run's rollouts (set by the pipeline), for objectives that
        re-evaluate the sampler's own distribution (AGRPO)."""

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.baseline, self.config.scale_adv_by_std,
                                negative_weight=self.config.negative_weight)

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Bool [N]: rows whose loss term can be nonzero; the trainer skips the others' forward passes
        (with positive-only advantages or zero-variance groups, most of a batch). None = every row."""
        return None

    def prepare(self, adapter: ModelAdapter, batch: RolloutBatch, micro_batch_size: int) -> dict[str, torch.Tensor]:
        """Cached tensors with N rows first (sliced per micro-batch by the trainer). Default: none."""
        return {}

    @abc.abstractmethod
    def loss(self, adapter: ModelAdapter, batch: RolloutBatch, cache: dict[str, torch.Tensor],
             iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a micro-batch (already divided by the full batch's normaliser) and its metrics
        (means over the micro-batch rows)."""

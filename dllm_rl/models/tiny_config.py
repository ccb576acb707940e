"""The tiny family's own settings: supervised masked-diffusion pretraining of its base model (the
``pretrain`` section of a run's config, which other model families ignore)."""
from __future__ import annotations

from dataclasses import dataclass

from ..checks import at_least, positive


@dataclass
class PretrainConfig:
    """Supervised masked-diffusion pretraining of the built-in tiny model on a task's train split."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    """Cosine decay after the warm-up ends at this fraction of ``lr`` (1.0 = constant, an un-annealed base)."""
    weight_decay: float = 0.01
    num_examples: int | None = None
    """Train on only the first N train examples (a weaker base model leaves room for RL)."""
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    seed: int = 0

    def __post_init__(self):
        at_least(self, 1, "steps", "batch_size", "num_examples", "hidden_size", "num_layers", "num_heads",
                 "intermediate_size")
        at_least(self, 0, "warmup", "weight_decay")
        positive(self, "lr")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size ({self.hidden_size}) must split into num_heads ({self.num_heads}) heads "
                             "of an even size (rotary embeddings)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (1 = constant after the warm-up), got {self.min_lr_ratio}")

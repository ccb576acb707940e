"""Exponential moving average (EMA) of the policy's trainable weights.

RL on a small model makes the greedy score of the latest weights swing from one evaluation to the
next; the average over the last ~1/(1-decay) optimizer steps is steadier. Rollouts keep sampling
from the live policy; evaluation and the exported model use the average (``swapped_in``)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

FILE = "ema.safetensors"


class WeightAverage:
    """``shadow <- decay * shadow + (1 - decay) * weight`` after every optimizer step, starting from
    the starting weights (so no bias correction is needed). Kept in float32 whatever the weights'
    dtype: a bf16 shadow would round most (1 - decay)-sized moves away."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):  # one tensor at a time: no float32 copy of the whole model
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the duration; the live ones (kept on the CPU meanwhile)
        restored after, exactly, also after an error or an interrupt mid-copy."""
        live = [p.detach().to("cpu", copy=True) for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.shadow):
                    p.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, live):
                    p.copy_(w)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({n: s.contiguous() for n, s in zip(self.names, self.shadow)}, str(Path(folder) / FILE))

    def load(self, folder: Path) -> None:
        """Strict: the file must hold exactly this model's trainable weights, with their shapes."""
        from safetensors.torch import load_file

        path = Path(folder) / FILE
        if not path.is_file():
            raise ValueError(f"no {FILE} (the checkpoint was written without optim.ema_decay)")
        saved = load_file(str(path))
        if set(saved) != set(self.names):
            missing = sorted(set(self.names) - set(saved))[:3]
            raise ValueError(f"{FILE} does not fit the model (missing {missing})")
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                if saved[n].shape != s.shape:
                    raise ValueError(f"{FILE}: {n} has shape {tuple(saved[n].shape)}, expected {tuple(s.shape)}")
                s.copy_(saved[n])

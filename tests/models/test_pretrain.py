"""The tiny model's pretraining schedule and the cache key of its base checkpoints."""
import dataclasses
import hashlib
import json

import pytest

from dllm_rl.config import PretrainConfig, RunConfig
from dllm_rl.models import tiny_family
from dllm_rl.models.pretrain import lr_factor


def test_warm_up_is_linear_then_cosine_ends_at_the_floor():
    cfg = PretrainConfig(steps=300, warmup=100, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01)
    assert lr_factor(49, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == pytest.approx(1.0)
    assert lr_factor(200, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_factor(300, cfg) == pytest.approx(0.1)


def test_ratio_one_is_constant_after_the_warm_up():
    cfg = PretrainConfig(steps=250, warmup=100, min_lr_ratio=1.0)
    assert [lr_factor(s, cfg) for s in (100, 175, 249)] == [1.0, 1.0, 1.0]


def test_ratio_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="min_lr_ratio"):
        PretrainConfig(min_lr_ratio=-0.1)


@dataclasses.dataclass
class _TaskConfig:
    seed: int = 0


class _Task:
    config = _TaskConfig()

    def examples(self, split):  # a cache miss first checks there is something to pretrain on
        return [{"id": "0"}]


def test_default_schedule_keeps_the_cache_key_of_checkpoints_made_before_the_option(monkeypatch, tmp_path):
    """Bases cached before ``min_lr_ratio`` existed were made with its default: they are still found."""
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path))
    run = RunConfig()
    run.task.name = "sudoku"
    pretrain = dataclasses.asdict(run.pretrain)
    del pretrain["min_lr_ratio"]
    old_key = json.dumps({"format": tiny_family.TINY_FORMAT, "task": "sudoku", "task_config": {"seed": 0},
                          "pretrain": pretrain, "gen_length": 24}, sort_keys=True)
    old = tmp_path / "tiny" / f"sudoku-{hashlib.sha256(old_key.encode()).hexdigest()[:12]}"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    assert tiny_family.base_checkpoint(run, _Task(), 24) == old

    run.pretrain.min_lr_ratio = 1.0  # another schedule is another checkpoint: it would be trained
    monkeypatch.setattr(tiny_family, "pretrain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("would train")))
    with pytest.raises(RuntimeError, match="would train"):
        tiny_family.base_checkpoint(run, _Task(), 24)

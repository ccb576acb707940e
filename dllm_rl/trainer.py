"""The RL loop: rollout -> reward -> advantage -> cache old/ref -> mu policy updates, on accelerate.

Algorithms only supply advantages, caches and a loss (``dllm_rl.rl.algorithm``); everything about
batching, sampling, optimisation, logging and checkpoints lives here once."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig
from .diffusion.masking import keyed_generator
from .diffusion.sampler import SamplerConfig, generate, left_pad
from .evaluation import evaluate
from .models.adapter import ModelAdapter
from .rl.advantages import zero_variance_fraction
from .rl.algorithm import Algorithm
from .rl.rollout import RolloutBatch, valid_token_mask
from .results import atomic_write_dir, without_seconds
from .task import Task


@dataclass
class TrainState:
    step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    rollout_nfe: int = 0


class Trainer:
    def __init__(self, run: RunConfig, adapter: ModelAdapter, task: Task, algorithm: Algorithm,
                 gen_length: int, run_dir: Path | None = None, on_step: Callable[[int, dict], None] | None = None):
        from accelerate import Accelerator

        self.run, self.adapter, self.task, self.algorithm = run, adapter, task, algorithm
        self.gen_length = gen_length
        self.run_dir = run_dir
        self.on_step = on_step
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        adapter.freeze_reference()
        o = run.optim
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        adapter.model, self.optimizer = self.accelerator.prepare(adapter.model, optimizer)
        self.params = params
        self.train_examples = task.examples("train")
        if not self.train_examples:
            raise ValueError(f"task {run.task.name!r} has no training examples")
        r = run.rollout
        self.sampler = SamplerConfig(gen_length=gen_length, steps=r.steps, block_length=r.block_length,
                                     temperature=r.temperature, remasking=r.remasking)
        self.state = TrainState()

    # -- rollout ----------------------------------------------------------------------------------
    def _prompts_for(self, step: int) -> list[dict]:
        """Prompts of rollout ``step``: consecutive slices of per-epoch keyed permutations of train."""
        n, k = len(self.train_examples), self.run.rollout.num_prompts
        out = []
        for pos in range(step * k, (step + 1) * k):
            epoch, i = divmod(pos, n)
            order = torch.randperm(n, generator=keyed_generator(self.run.seed, "epoch", epoch))
            out.append(self.train_examples[int(order[i])])
        return out

    def rollout(self, step: int) -> tuple[RolloutBatch, list[str]]:
        """Sample G completions per prompt, score them and compute advantages."""
        g = self.run.rollout.group_size
        style = self.adapter.prompt_style
        examples = [ex for ex in self._prompts_for(step) for _ in range(g)]
        prompts = [self.adapter.encode_prompt(self.task.prompt(ex, style)) for ex in examples]
        gens = [keyed_generator(self.run.seed, "rollout", step, ex["id"], j % g) for j, ex in enumerate(examples)]
        self.adapter.model.eval()
        out = generate(self.adapter.logits, prompts, self.adapter.mask_id, self.adapter.pad_id, self.sampler, gens)
        self.adapter.model.train()
        texts = [self.adapter.decode(row) for row in out.completions]
        rewards = torch.tensor([float(self.task.reward(ex, t, style)) for ex, t in zip(examples, texts)])
        prompt_ids, prompt_mask = left_pad(prompts, self.adapter.pad_id)
        valid = valid_token_mask(out.completions, tuple(self.adapter.stop_ids) or (self.adapter.eos_id,))
        n = len(examples)
        batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=out.completions,
                             valid_mask=valid, rewards=rewards, advantages=self.algorithm.advantages(rewards, g),
                             rows=torch.arange(n), groups=torch.arange(n) // g, commit_step=out.commit_step, sample_logprobs=out.logprobs,
                             step=step, num_rows=n, num_groups=n // g, total_valid_tokens=int(valid.sum()))
        self.state.rollout_nfe = out.nfe
        return batch, texts

    # -- update -----------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``mu`` optimizer steps on one rollout batch; returns averaged metrics."""
        o, mu = self.run.optim, self.algorithm.config.mu
        cache = self.algorithm.prepare(self.adapter, batch, o.micro_batch_size)
        sums: dict[str, float] = defaultdict(float)
        maxes: dict[str, float] = {}
        for it in range(mu):
            self.optimizer.zero_grad(set_to_none=True)
            for idx in batch.micro_batches(o.micro_batch_size):
                mb = batch.select(idx)
                loss, metrics = self.algorithm.loss(self.adapter, mb, {k: v[idx] for k, v in cache.items()}, it)
                self.accelerator.backward(loss)
                share = len(idx) / batch.num_rows / mu
                sums["loss"] += float(loss.detach()) / mu
                for k, v in metrics.items():
                    if k.endswith("_max"):
                        maxes[k] = max(maxes.get(k, float("-inf")), v)
                    else:
                        sums[k] += v * share
            norm = self.accelerator.clip_grad_norm_(self.params, o.grad_clip)
            sums["grad_norm"] += float(norm) / mu
            self.optimizer.step()
        return {**sums, **maxes}

    # -- loop -------------------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        e = self.run.eval
        return evaluate(self.adapter, self.task, e.val_split, [self.gen_length], e.batch_size, e.max_examples,
                        self.run.rollout.block_length)

    def train(self) -> TrainState:
        metrics_file = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics_file = open(self.run_dir / "metrics.jsonl", "w")
        g = self.run.rollout.group_size
        try:
            for step in range(self.run.optim.max_steps):
                start = time.perf_counter()
                batch, _ = self.rollout(step)
                rollout_s = time.perf_counter() - start
                m = self.update(batch)
                m.update(step=step, reward=float(batch.rewards.mean()), reward_std=float(batch.rewards.std()),
                         zero_var_frac=zero_variance_fraction(batch.rewards, g))
                seconds = time.perf_counter() - start
                self.state.curve.append({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()})
                self.state.step_seconds.append(round(seconds, 3))
                if self.run.eval.every and (step + 1) % self.run.eval.every == 0:
                    val = self.validate()
                    self.state.validation.append({"step": step + 1, "metrics": without_seconds(val)})
                    m["val"] = next(iter(val.values()))
                if metrics_file is not None:
                    metrics_file.write(json.dumps({**m, "seconds": seconds, "rollout_seconds": rollout_s}) + "\n")
                    metrics_file.flush()
                self.state.step = step + 1
                if self.on_step is not None:
                    self.on_step(step, {**m, "seconds": seconds})
                every = self.run.output.checkpoint_every
                if every and self.run_dir is not None and (step + 1) % every == 0:
                    self.save(self.run_dir / "checkpoint")
        finally:
            if metrics_file is not None:
                metrics_file.close()
        return self.state

    def save(self, path: Path) -> None:
        """Model (or adapters), tokenizer, optimizer and step, written atomically."""
        def write(tmp: Path) -> None:
            self.accelerator.unwrap_model(self.adapter.model).save_pretrained(tmp)
            if hasattr(self.adapter.tokenizer, "save_pretrained"):
                self.adapter.tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": self.optimizer.state_dict(), "step": self.state.step}, tmp / "trainer_state.pt")

        atomic_write_dir(path, write)


"""The RL loop: rollout -> reward -> advantage -> cache old/ref -> mu policy updates, on accelerate.

Algorithms only supply advantages, caches and a loss (``dllm_rl.rl.algorithm``); everything about
batching, sampling, optimisation, processes, logging and checkpoints lives here once.

Any number of processes (``accelerate launch``) gives the same run as one: each process samples,
scores and caches whole prompt groups of the global rollout batch (``dllm_rl.distributed``), losses
are normalised by the global batch, and gradients summed over processes equal the one-process ones."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from .config import RunConfig, from_dict, to_dict
from .diffusion.masking import keyed_generator
from .diffusion.sampler import SamplerConfig, generate, left_pad
from .distributed import (TaskShard, checked_on_main, combine_eval, configure_deepspeed, gather_objects, gather_rows,
                          my_prompts, reduce_metrics, shard_batch_size, sum_int)
from .errors import UsageError
from .evaluation import evaluate
from .models.adapter import ModelAdapter
from .atomic import atomic_write_dir
from .results import without_seconds
from .rl.advantages import zero_variance_fraction
from .rl.algorithm import Algorithm
from .rl.rollout import RolloutBatch, valid_token_mask
from .progress import RunProgress
from .runlog import StepLog, check_trackers, scalars
from .task import Task
from .weight_average import WeightAverage


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (LoRA's ``lora_dropout`` modules included), so that forward
    passes in train mode (kept for gradient checkpointing) are deterministic functions of the weights."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0


def warmup_factor(optimizer_step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up over the first ``warmup_steps`` optimizer steps, then constant:
    a fresh Adam state makes its first updates about lr in size on every weight, whatever the gradient."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (optimizer_step + 1) / warmup_steps)


def lr_factor(optimizer_step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The warm-up, then ``constant`` or a ``cosine``/``linear`` decay from 1 to 0 reached after the
    last optimizer step (``total_steps``), as in transformers' schedules."""
    if schedule == "constant" or optimizer_step < warmup_steps:
        return warmup_factor(optimizer_step, warmup_steps)
    progress = min(1.0, (optimizer_step - warmup_steps + 1) / max(1, total_steps - warmup_steps + 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


@dataclass
class StepSamples:
    """One rollout step's text side, passed to logging: this step's prompts (global batch order),
    and this process's completions and rewards (row order)."""

    prompts: list[dict]
    texts: list[str]
    rewards: list[float]


@dataclass
class TrainState:
    """Everything about training so far that is not a tensor; saved in every checkpoint."""

    step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    rollout_nfe: float = 0.0
    best: dict[str, Any] | None = None
    """Best validation score so far: {"step", "metric", "value"} (weights in checkpoints/best)."""


class Trainer:
    """One RL run on this process's share of the work: ``start`` (fresh or ``--resume``), ``train``
    (rollout, update), ``evaluate`` (sharded) and ``save`` (Hugging Face export); full-state
    checkpoints through ``self.checkpoints`` (``checkpoint.CheckpointManager``)."""

    def __init__(self, run: RunConfig, adapter: ModelAdapter, task: Task, algorithm: Algorithm,
                 gen_length: int, run_dir: Path | None = None, on_step: Callable[[int, dict], None] | None = None,
                 progress: RunProgress | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, ProjectConfiguration

        self.run, self.adapter, self.task, self.algorithm = run, adapter, task, algorithm
        self.gen_length = gen_length
        self.run_dir = run_dir
        self.on_step = on_step
        trackers = check_trackers(run.output.report_to)
        if trackers and run_dir is None:
            raise UsageError("output.report_to needs a run folder")
        project = ProjectConfiguration(project_dir=str(run_dir / "trackers")) if trackers else None
        self.accelerator = acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None,
                                             project_config=project)
        self.is_main = acc.is_main_process
        self.progress = progress if self.is_main else None
        r, o = run.rollout, run.optim
        self.my_prompts = my_prompts(r.num_prompts, acc.process_index, acc.num_processes)
        local_rows = len(self.my_prompts) * r.group_size
        self.num_micro = math.ceil(local_rows / o.micro_batch_size)
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        fsdp1 = acc.distributed_type == DistributedType.FSDP and not getattr(acc, "is_fsdp2", False)
        self.sharded_states = self.deepspeed or acc.distributed_type == DistributedType.FSDP
        if self.deepspeed:
            configure_deepspeed(acc, min(o.micro_batch_size, local_rows), self.num_micro, o.grad_clip)

        if o.ema_decay and self.sharded_states:
            raise UsageError("optim.ema_decay needs one process or DDP: under FSDP and DeepSpeed the weights are sharded")
        if fsdp1 and ckpt.is_peft(adapter.model):  # the FSDP1 wrapper hides peft's disable_adapter
            raise UsageError("LoRA under FSDP needs FSDP2: set fsdp_version: 2 (as dllm_rl/accelerate_configs/fsdp.yaml does)")
        if run.model.disable_dropout:
            disable_dropout(adapter.model)
        adapter.freeze_reference()  # before wrapping: the reference is the starting policy
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.wrapped, self.optimizer = acc.prepare(adapter.model, optimizer)
        self.policy = acc.unwrap_model(self.wrapped)
        # Gradient-free forwards (sampling, caches, evaluation) skip the DDP wrapper: no collectives,
        # so processes may run different numbers of them. FSDP1 can only run through its wrapper.
        self.plain = self.wrapped if fsdp1 else self.policy
        self.ema = None
        if o.ema_decay:
            self.ema = WeightAverage([(n, p) for n, p in self.policy.named_parameters() if p.requires_grad], o.ema_decay)
        adapter.model = self.plain
        self.checkpoints = ckpt.CheckpointManager(acc, run_dir, self.policy, to_dict(run), run.output.keep_checkpoints,
                                                  self.ema, adapter.tokenizer, sharded=self.sharded_states)
        if trackers:
            config = {k: str(v) if isinstance(v, list) else v for k, v in _flat(to_dict(run)).items()}
            acc.init_trackers("dllm-rl", config=config, init_kwargs={"wandb": {"name": run_dir.name}})

        self.train_examples = task.examples("train")
        if not self.train_examples:
            raise ValueError(f"task {run.task.name!r} has no training examples")
        if run.eval.every and run.eval.val_split not in task.splits:
            raise UsageError(f"eval.val_split {run.eval.val_split!r} is not a split of task {run.task.name!r}; "
                             f"valid: {', '.join(s for s in task.splits if s != run.eval.split)}")
        try:
            r.check_steps(gen_length)  # gen_length may come from the task's protocol
        except ValueError as exc:
            raise UsageError(f"rollout: {exc}") from None
        self.sampler = SamplerConfig.of(r, gen_length, eos_id=adapter.eos_id if r.early_stop else None)
        if r.prompt_cache:
            try:
                adapter.prompt_cache_fns()
            except ValueError as e:
                raise UsageError(str(e)) from None
        self.primary = task.protocol(adapter.prompt_style).primary_metric
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

    def rollout(self, step: int) -> tuple[RolloutBatch, StepSamples]:
        """Sample G completions for each of this process's prompts, score them and compute advantages.
        Rows carry their global index (p * G + j for prompt p), which keys noise and masks."""
        g = self.run.rollout.group_size
        style = self.adapter.prompt_style
        batch_prompts = self._prompts_for(step)
        examples = [batch_prompts[p] for p in self.my_prompts for _ in range(g)]
        prompts = [self.adapter.encode_prompt(self.task.prompt(ex, style)) for ex in examples]
        gens = [keyed_generator(self.run.seed, "rollout", step, ex["id"], j % g) for j, ex in enumerate(examples)]
        self.adapter.model.eval()
        cache_fns = self.adapter.prompt_cache_fns() if self.sampler.prompt_cache else None
        out = generate(self.adapter.logits, prompts, self.adapter.mask_id, self.adapter.pad_id, self.sampler, gens, cache_fns)
        self.adapter.model.train()
        texts = [self.adapter.decode(row) for row in out.completions]
        reward_values = [float(r) for r in self.task.rewards(examples, texts, style)]
        rewards = torch.tensor(reward_values)
        prompt_ids, prompt_mask = left_pad(prompts, self.adapter.pad_id)
        valid = valid_token_mask(out.completions, tuple(self.adapter.stop_ids) or (self.adapter.eos_id,))
        rows = torch.tensor([p * g + j for p in self.my_prompts for j in range(g)])
        k = self.run.rollout.num_prompts
        batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=out.completions,
                             valid_mask=valid, rewards=rewards, advantages=self.algorithm.advantages(rewards, g),
                             rows=rows, groups=rows // g, commit_step=out.commit_step, sample_logprobs=out.logprobs,
                             step=step, num_rows=k * g, num_groups=k,
                             total_valid_tokens=sum_int(self.accelerator, int(valid.sum())))
        self.state.rollout_nfe = round(float(out.row_nfe.float().mean()), 2)  # per sample; rows may stop early
        return batch, StepSamples(prompts=batch_prompts, texts=texts, rewards=reward_values)

    # -- update -----------------------------------------------------------------------------------
    def _sync_context(self, last: bool):
        """Gradients are reduced across processes once per optimizer step, after the last micro-batch."""
        if self.deepspeed:
            return self.accelerator.accumulate(self.wrapped)
        if last or self.accelerator.num_processes == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.wrapped)

    @contextlib.contextmanager
    def _grad_model(self):
        """The policy as the wrapped (gradient-synchronising) model while losses are computed."""
        self.adapter.model = self.wrapped
        try:
            yield
        finally:
            self.adapter.model = self.plain

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``mu`` optimizer steps on one rollout batch; returns metrics averaged over the global batch.

        The algorithm's loss is this micro-batch's share of the global batch loss; processes average
        gradients, so each process scales its loss by the process count (and by the accumulation
        steps under DeepSpeed, which divides by them) to get the sum, i.e. the one-process gradient."""
        o, mu = self.run.optim, self.algorithm.config.mu
        kept = self._rows_with_gradient(batch)
        rows = batch.num_rows if kept is batch else kept.completion_ids.shape[0]  # metrics: means over the rows run
        batch = kept.to(self.accelerator.device)
        cache = self.algorithm.prepare(self.adapter, batch, o.micro_batch_size)
        scale = self.accelerator.num_processes * (self.num_micro if self.deepspeed else 1)
        micro, counted, rows = self._micro_batches(batch, rows)
        sums: dict[str, float] = {}
        maxes: dict[str, float] = {}
        norms = 0.0
        with self._grad_model():
            for it in range(mu):
                self.optimizer.zero_grad(set_to_none=True)
                for group in self.optimizer.param_groups:  # before backward: DeepSpeed steps inside it
                    group["lr"] = o.lr * lr_factor(self.state.step * mu + it, o.max_steps * mu, o.warmup_steps, o.lr_schedule)
                for i, idx in enumerate(micro):
                    with self._sync_context(last=i == len(micro) - 1):
                        mb = batch.select(idx)
                        loss, metrics = self.algorithm.loss(self.adapter, mb, {k: v[idx] for k, v in cache.items()}, it)
                        self.accelerator.backward(loss * scale if scale != 1 else loss)
                    share = len(idx) / rows / mu if counted[i] else 0.0  # keys kept, for the cross-process sum
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / mu
                    for k, v in metrics.items():
                        if k.endswith("_max"):
                            maxes[k] = max(maxes.get(k, float("-inf")), v if counted[i] else float("-inf"))
                        else:
                            sums[k] = sums.get(k, 0.0) + v * share
                norm = self.accelerator.clip_grad_norm_([p for p in self.wrapped.parameters() if p.requires_grad], o.grad_clip)
                norms += (float("nan") if norm is None else float(norm)) / mu  # same on every process
                self.optimizer.step()
                if self.ema is not None and not self.optimizer.step_was_skipped:  # fp16 overflow: no step, no average
                    self.ema.update()
        sums, maxes = reduce_metrics(self.accelerator, sums, maxes)
        return {**sums, "grad_norm": norms, **maxes}

    def _micro_batches(self, batch: RolloutBatch, rows: int) -> tuple[list[torch.Tensor], list[bool], int]:
        """Micro-batches, whether each counts in the step metrics, and the row count metrics average
        over. With several processes rows are never skipped (DDP), but with ``optim.skip_zero_rows``
        the rows without a loss term go into micro-batches of their own that run without counting, so
        metrics average over the same rows as one process's skipping path (the logged curve does not
        depend on the process count)."""
        size = self.run.optim.micro_batch_size
        micro = list(batch.micro_batches(size))
        if not self.run.optim.skip_zero_rows or self.accelerator.num_processes == 1 or self.deepspeed:
            return micro, [True] * len(micro), rows
        keep = self.algorithm.rows_with_gradient(batch)
        if keep is None:
            return micro, [True] * len(micro), rows
        total = sum_int(self.accelerator, int(keep.sum()))  # every process decides alike from the global count
        if total in (0, batch.num_rows):
            return micro, [True] * len(micro), rows
        kept, zero = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
        chunks = [(kept[i:i + size], True) for i in range(0, len(kept), size)]
        chunks += [(zero[i:i + size], False) for i in range(0, len(zero), size)]
        return [c for c, _ in chunks], [f for _, f in chunks], total

    def _rows_with_gradient(self, batch: RolloutBatch) -> RolloutBatch:
        """The rows whose loss term can be nonzero (``optim.skip_zero_rows``). Masks are keyed by each
        row's index in the full batch and losses normalised by the full batch, so dropping rows with a
        zero term leaves the update unchanged; step metrics are then means over the kept rows. Not
        with several processes: DDP needs the same number of backward passes on every process."""
        if not self.run.optim.skip_zero_rows or self.accelerator.num_processes > 1 or self.deepspeed:
            return batch
        keep = self.algorithm.rows_with_gradient(batch)
        if keep is None or bool(keep.all()):
            return batch
        keep = keep.clone()
        keep[0] |= not bool(keep.any())  # one zero-loss row keeps the step's metrics and a (zero) gradient
        return batch.select(keep.nonzero().squeeze(1))

    # -- evaluation -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _base_model(self):
        """The starting weights as the policy: the frozen copy, or the LoRA base with adapters off."""
        self.adapter.model = self.adapter.reference_model or self.plain
        try:
            with self.adapter.reference():
                yield
        finally:
            self.adapter.model = self.plain

    def evaluate(self, split: str, lengths: list[int], base: bool = False, phase: str | None = None) -> dict[str, dict[str, float]]:
        """``evaluation.evaluate`` with the examples sharded over processes (every process gets the
        combined metrics); ``base`` scores the starting weights instead of the current policy, whose
        weight average stands in for it when there is one. ``phase`` names its progress bar."""
        bar = None if self.progress is None else self.progress.bar(phase or f"evaluating ({split})", None)
        with self._base_model() if base else self._scored_weights():
            result = self._evaluate(split, lengths, bar)
        if bar is not None:
            primary = next(iter(result.values())).get(self.primary)
            bar.finish("" if primary is None else f"{self.primary} {100 * primary:.1f}")
        return result

    def _scored_weights(self):
        """The weights evaluation and export use: the weight average in place while there is one."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def _evaluate(self, split: str, lengths: list[int], bar=None) -> dict[str, dict[str, float]]:
        e, acc = self.run.eval, self.accelerator
        if acc.num_processes == 1:
            return evaluate(self.adapter, self.task, split, lengths, e.batch_size, e.max_examples, self.run, bar)
        examples = self.task.examples(split)[:e.max_examples]
        if len(examples) < acc.num_processes:
            raise UsageError(f"{split} split: {len(examples)} examples for {acc.num_processes} processes; "
                             "evaluate on at least one example per process (eval.max_examples)")
        mine = examples[acc.process_index::acc.num_processes]
        bs = shard_batch_size(len(examples), acc.num_processes, e.batch_size, len(mine))
        part = evaluate(self.adapter, TaskShard(self.task, split, mine), split, lengths, bs, None, self.run, bar)
        return combine_eval(gather_objects(acc, [part]), self.primary)

    def validate(self, step: int | None = None) -> dict[str, Any]:
        where = "" if step is None else f" at step {step}"
        return self.evaluate(self.run.eval.val_split, [self.gen_length], phase=f"validation{where}")

    # -- loop -------------------------------------------------------------------------------------
    def train(self) -> TrainState:
        """Steps from ``state.step`` (0, or the resumed checkpoint's) up to ``optim.max_steps``."""
        g, every = self.run.rollout.group_size, self.run.output.checkpoint_every
        resumed = self.state.step if self.state.step else None
        metrics_log = completions_log = None
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with self.checkpoints.reporting_write_errors(self.run_dir / "metrics.jsonl"):
                metrics_log = StepLog(self.run_dir / "metrics.jsonl", resumed)
            if self.run.output.completions != "none":
                path = self.run_dir / f"completions.{self.run.output.completions}"
                with self.checkpoints.reporting_write_errors(path):
                    completions_log = StepLog(path, resumed)
        bar = None
        if self.progress is not None:
            bar = self.progress.bar("RL training", self.run.optim.max_steps)
            bar.update(completed=self.state.step)
        shown = tuple(getattr(self.algorithm, "progress_metrics", ()))
        try:
            for step in range(self.state.step, self.run.optim.max_steps):
                start = time.perf_counter()
                batch, samples = self.rollout(step)
                rollout_s = time.perf_counter() - start
                m = self.update(batch)
                rewards, advantages = gather_rows(self.accelerator, batch.rows, batch.rewards, batch.advantages)
                m.update(step=step, reward=float(rewards.mean()), reward_std=float(rewards.std()),
                         zero_var_frac=zero_variance_fraction(rewards, g), rollout_nfe=self.state.rollout_nfe)
                self._log_completions(completions_log, batch, samples)
                seconds = time.perf_counter() - start
                self.state.curve.append({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()})
                self.state.step_seconds.append(round(seconds, 3))
                self.state.step = step + 1
                if self.run.eval.every and (step + 1) % self.run.eval.every == 0:
                    m["val"] = self._validate_and_keep_best(step + 1)
                if metrics_log is not None:
                    with self.checkpoints.reporting_write_errors(metrics_log.path):
                        metrics_log.write({**m, "seconds": seconds, "rollout_seconds": rollout_s})
                self.accelerator.log(scalars({**m, "seconds": seconds}), step=step)
                if every and self.run_dir is not None and (step + 1) % every == 0:
                    self.checkpoints.save_step(self._checkpoint_state())
                if bar is not None:
                    self.progress.step_line(bar, step, {**m, "seconds": seconds}, shown)
                if self.on_step is not None and self.is_main:
                    self.on_step(step, {**m, "seconds": seconds})
        finally:
            for log in (metrics_log, completions_log):
                if log is not None:
                    log.close()
        if bar is not None:
            bar.finish(f"{self.state.step} steps")
        return self.state

    def _validate_and_keep_best(self, step: int) -> dict[str, float]:
        """Score the validation split (never test); keep the best weights as checkpoints/best."""
        val = self.validate(step)
        self.state.validation.append({"step": step, "metrics": without_seconds(val)})
        row = val[str(self.gen_length)]
        value = row[self.primary]
        if self.state.best is None or value > self.state.best["value"]:
            self.state.best = {"step": step, "metric": f"{self.run.eval.val_split} {self.primary} at L={self.gen_length}",
                               "value": value}
            if self.run_dir is not None:
                self.checkpoints.write(self.checkpoints.best_path, self._checkpoint_state())
        return row

    def _log_completions(self, log: StepLog | None, batch: RolloutBatch, samples: StepSamples) -> None:
        """One record per prompt group: prompt, and each completion with its reward and advantage."""
        if self.run.output.completions == "none" or self.run_dir is None:
            return
        g, style = self.run.rollout.group_size, self.adapter.prompt_style
        prompts, texts = samples.prompts, samples.texts
        records = []
        for i, p in enumerate(self.my_prompts):
            ex = prompts[p]
            rows = range(i * g, (i + 1) * g)
            records.append({"step": batch.step, "prompt_index": p, "example_id": ex["id"],
                            "prompt": self.task.prompt(ex, style),
                            "completions": [{"text": texts[r], "reward": samples.rewards[r],
                                             "advantage": round(float(batch.advantages[r]), 6)} for r in rows]})
        records = gather_objects(self.accelerator, records)
        if log is not None:
            for rec in sorted(records, key=lambda r: r["prompt_index"]):
                with self.checkpoints.reporting_write_errors(log.path):
                    log.write(rec)

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint records besides tensors: step, data position, training state."""
        k = self.run.rollout.num_prompts
        epoch, index = divmod(self.state.step * k, len(self.train_examples))
        return {"step": self.state.step, "train_state": asdict(self.state),
                "data_position": {"prompts_seen": self.state.step * k, "epoch": epoch, "index_in_epoch": index}}

    def start(self, resume: bool = False) -> Path | None:
        """Before training: with ``resume``, continue from the run folder's newest checkpoint (returned)."""
        path = self.checkpoints.start(resume, self.run.output.checkpoint_every)
        if path is not None:
            saved = self.checkpoints.load(path)["train_state"]
            try:
                self.state = from_dict(TrainState, saved, "train_state")
            except UsageError as exc:
                raise UsageError(f"checkpoint {str(path)!r} is corrupt or incomplete ({ckpt.STATE_FILE}: {exc}); delete "
                                 "it to resume from an earlier one, or run without --resume") from None
        return path

    def load_best(self) -> int:
        """Put the best-validation weights into the policy; returns their step."""
        best = self.state.best
        path = self.checkpoints.best_path
        if best is None:
            raise UsageError("eval.select=best needs validation during training (eval.every > 0)")
        saved = ckpt.verify(path, checksums=False)  # load checks the checksums
        if saved["step"] != best["step"]:
            raise UsageError(f"{str(path)!r} holds step {saved['step']}, not the best step {best['step']} of this run")
        self.checkpoints.load(path)  # weights and optimizer; the training state stays this run's
        return best["step"]

    def save(self, path: Path) -> None:
        """The policy (or its LoRA adapters; their weight average with ``optim.ema_decay``) and tokenizer
        in Hugging Face format, written atomically."""
        state_dict = self.accelerator.get_state_dict(self.wrapped) if self.sharded_states else None

        def write(tmp: Path) -> None:
            self.policy.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
            if hasattr(self.adapter.tokenizer, "save_pretrained"):
                self.adapter.tokenizer.save_pretrained(tmp)

        def export() -> None:
            with self._scored_weights(), self.checkpoints.reporting_write_errors(path):
                atomic_write_dir(path, write)

        checked_on_main(self.accelerator, export)  # every process learns of a failed write, none waits

    def finish(self) -> None:
        """Close trackers."""
        if self.run.output.report_to:
            self.accelerator.end_training()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, dict):
            out[f"{prefix}{k}"] = v
    return out

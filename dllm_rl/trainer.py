"""The RL loop: rollout -> reward -> advantage -> cache old/ref -> mu policy updates, on accelerate.

Algorithms only supply advantages, caches and a loss (``dllm_rl.rl.algorithm``); everything about
batching, sampling, optimisation, processes, logging and checkpoints lives here once.

Any number of processes (``accelerate launch``) gives the same run as one: each process samples,
scores and caches whole prompt groups of the global rollout batch (``dllm_rl.distributed``), losses
are normalised by the global batch, and gradients summed over processes equal the one-process ones."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from .config import RunConfig, to_dict
from .diffusion.masking import keyed_generator
from .diffusion.sampler import SamplerConfig, generate, left_pad
from .distributed import (TaskShard, broadcast_from_main, collective_write_dir, combine_eval, gather_objects, gather_rows, my_prompts,
                          reduce_metrics, shard_batch_size, sum_int)
from .errors import UsageError
from .evaluation import evaluate
from .models.adapter import ModelAdapter
from .results import atomic_write_dir, atomic_write_text, without_seconds
from .rl.advantages import zero_variance_fraction
from .rl.algorithm import Algorithm
from .rl.rollout import RolloutBatch, valid_token_mask
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
    """One RL run on this process's share of the work: ``start`` (fresh or ``--resume``), ``train``,
    ``evaluate`` (sharded), ``save`` (Hugging Face export) and full-state checkpoints."""

    def __init__(self, run: RunConfig, adapter: ModelAdapter, task: Task, algorithm: Algorithm,
                 gen_length: int, run_dir: Path | None = None, on_step: Callable[[int, dict], None] | None = None):
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
        r, o = run.rollout, run.optim
        self.my_prompts = my_prompts(r.num_prompts, acc.process_index, acc.num_processes)
        local_rows = len(self.my_prompts) * r.group_size
        self.num_micro = math.ceil(local_rows / o.micro_batch_size)
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        fsdp1 = acc.distributed_type == DistributedType.FSDP and not getattr(acc, "is_fsdp2", False)
        self.sharded_states = self.deepspeed or acc.distributed_type == DistributedType.FSDP
        if self.deepspeed:  # our loop decides batch sizes, accumulation and clipping, not the DS config
            ds = acc.state.deepspeed_plugin.deepspeed_config
            micro = min(o.micro_batch_size, local_rows)
            ds["train_micro_batch_size_per_gpu"] = micro
            ds["gradient_accumulation_steps"] = self.num_micro
            ds["train_batch_size"] = micro * self.num_micro * acc.num_processes  # DeepSpeed's consistency check
            ds["gradient_clipping"] = o.grad_clip
            acc.gradient_accumulation_steps = self.num_micro

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
        if not self.sharded_states:
            acc.register_save_state_pre_hook(self._save_model_hook)
            acc.register_load_state_pre_hook(self._load_model_hook)
        if trackers:
            config = {k: str(v) if isinstance(v, list) else v for k, v in _flat(to_dict(run)).items()}
            acc.init_trackers("dllm-rl", config=config, init_kwargs={"wandb": {"name": run_dir.name}})

        self.train_examples = task.examples("train")
        if not self.train_examples:
            raise ValueError(f"task {run.task.name!r} has no training examples")
        if run.eval.every and run.eval.val_split not in task.splits:
            raise UsageError(f"eval.val_split {run.eval.val_split!r} is not a split of task {run.task.name!r}; "
                             f"valid: {', '.join(s for s in task.splits if s != run.eval.split)}")
        self.sampler = SamplerConfig(gen_length=gen_length, steps=r.steps, block_length=r.block_length,
                                     temperature=r.temperature, remasking=r.remasking, threshold=r.threshold,
                                     prompt_cache=r.prompt_cache, prompt_cache_refresh=r.prompt_cache_refresh,
                                     batch_size=r.batch_size, eos_id=adapter.eos_id if r.early_stop else None)
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

    def rollout(self, step: int) -> tuple[RolloutBatch, list[str]]:
        """Sample G completions for each of this process's prompts, score them and compute advantages.
        Rows carry their global index (p * G + j for prompt p), which keys noise and masks."""
        g = self.run.rollout.group_size
        style = self.adapter.prompt_style
        batch_prompts = self._step_prompts = self._prompts_for(step)
        examples = [batch_prompts[p] for p in self.my_prompts for _ in range(g)]
        prompts = [self.adapter.encode_prompt(self.task.prompt(ex, style)) for ex in examples]
        gens = [keyed_generator(self.run.seed, "rollout", step, ex["id"], j % g) for j, ex in enumerate(examples)]
        self.adapter.model.eval()
        cache_fns = self.adapter.prompt_cache_fns() if self.sampler.prompt_cache else None
        out = generate(self.adapter.logits, prompts, self.adapter.mask_id, self.adapter.pad_id, self.sampler, gens, cache_fns)
        self.adapter.model.train()
        texts = [self.adapter.decode(row) for row in out.completions]
        self._step_rewards = [float(r) for r in self.task.rewards(examples, texts, style)]
        rewards = torch.tensor(self._step_rewards)
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
        return batch, texts

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
        micro = list(batch.micro_batches(o.micro_batch_size))
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
                    share = len(idx) / rows / mu
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / mu
                    for k, v in metrics.items():
                        if k.endswith("_max"):
                            maxes[k] = max(maxes.get(k, float("-inf")), v)
                        else:
                            sums[k] = sums.get(k, 0.0) + v * share
                norm = self.accelerator.clip_grad_norm_([p for p in self.wrapped.parameters() if p.requires_grad], o.grad_clip)
                norms += (float("nan") if norm is None else float(norm)) / mu  # same on every process
                self.optimizer.step()
                if self.ema is not None and not self.optimizer.step_was_skipped:  # fp16 overflow: no step, no average
                    self.ema.update()
        sums, maxes = reduce_metrics(self.accelerator, sums, maxes)
        return {**sums, "grad_norm": norms, **maxes}

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

    def evaluate(self, split: str, lengths: list[int], base: bool = False) -> dict[str, dict[str, float]]:
        """``evaluation.evaluate`` with the examples sharded over processes (every process gets the
        combined metrics); ``base`` scores the starting weights instead of the current policy, whose
        weight average stands in for it when there is one."""
        if base:
            with self._base_model():
                return self._evaluate(split, lengths)
        with self._scored_weights():
            return self._evaluate(split, lengths)

    def _scored_weights(self):
        """The weights evaluation and export use: the weight average in place while there is one."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def _evaluate(self, split: str, lengths: list[int]) -> dict[str, dict[str, float]]:
        e, acc = self.run.eval, self.accelerator
        block = self.run.rollout.block_length
        if acc.num_processes == 1:
            return evaluate(self.adapter, self.task, split, lengths, e.batch_size, e.max_examples, block)
        examples = self.task.examples(split)[:e.max_examples]
        if len(examples) < acc.num_processes:
            raise UsageError(f"{split} split: {len(examples)} examples for {acc.num_processes} processes; "
                             "evaluate on at least one example per process (eval.max_examples)")
        mine = examples[acc.process_index::acc.num_processes]
        bs = shard_batch_size(len(examples), acc.num_processes, e.batch_size, len(mine))
        part = evaluate(self.adapter, TaskShard(self.task, split, mine), split, lengths, bs, None, block)
        return combine_eval(gather_objects(acc, [part]), self.primary)

    def validate(self) -> dict[str, Any]:
        return self.evaluate(self.run.eval.val_split, [self.gen_length])

    # -- loop -------------------------------------------------------------------------------------
    def train(self) -> TrainState:
        """Steps from ``state.step`` (0, or the resumed checkpoint's) up to ``optim.max_steps``."""
        g, every = self.run.rollout.group_size, self.run.output.checkpoint_every
        resumed = self.state.step if self.state.step else None
        metrics_log = completions_log = None
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics_log = StepLog(self.run_dir / "metrics.jsonl", resumed)
            if self.run.output.completions != "none":
                completions_log = StepLog(self.run_dir / f"completions.{self.run.output.completions}", resumed)
        try:
            for step in range(self.state.step, self.run.optim.max_steps):
                start = time.perf_counter()
                batch, texts = self.rollout(step)
                rollout_s = time.perf_counter() - start
                m = self.update(batch)
                rewards, advantages = gather_rows(self.accelerator, batch.rows, batch.rewards, batch.advantages)
                m.update(step=step, reward=float(rewards.mean()), reward_std=float(rewards.std()),
                         zero_var_frac=zero_variance_fraction(rewards, g), rollout_nfe=self.state.rollout_nfe)
                self._log_completions(completions_log, batch, texts)
                seconds = time.perf_counter() - start
                self.state.curve.append({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()})
                self.state.step_seconds.append(round(seconds, 3))
                self.state.step = step + 1
                if self.run.eval.every and (step + 1) % self.run.eval.every == 0:
                    m["val"] = self._validate_and_keep_best(step + 1)
                if metrics_log is not None:
                    metrics_log.write({**m, "seconds": seconds, "rollout_seconds": rollout_s})
                self.accelerator.log(scalars({**m, "seconds": seconds}), step=step)
                if every and self.run_dir is not None and (step + 1) % every == 0:
                    self.save_checkpoint()
                if self.on_step is not None and self.is_main:
                    self.on_step(step, {**m, "seconds": seconds})
        finally:
            for log in (metrics_log, completions_log):
                if log is not None:
                    log.close()
        return self.state

    def _validate_and_keep_best(self, step: int) -> dict[str, float]:
        """Score the validation split (never test); keep the best weights as checkpoints/best."""
        val = self.validate()
        self.state.validation.append({"step": step, "metrics": without_seconds(val)})
        row = val[str(self.gen_length)]
        value = row[self.primary]
        if self.state.best is None or value > self.state.best["value"]:
            self.state.best = {"step": step, "metric": f"{self.run.eval.val_split} {self.primary} at L={self.gen_length}",
                               "value": value}
            if self.run_dir is not None:
                self._write_checkpoint(ckpt.checkpoints_dir(self.run_dir) / ckpt.BEST)
        return row

    def _log_completions(self, log: StepLog | None, batch: RolloutBatch, texts: list[str]) -> None:
        """One record per prompt group: prompt, and each completion with its reward and advantage."""
        if self.run.output.completions == "none" or self.run_dir is None:
            return
        g, style = self.run.rollout.group_size, self.adapter.prompt_style
        prompts = self._step_prompts
        records = []
        for i, p in enumerate(self.my_prompts):
            ex = prompts[p]
            rows = range(i * g, (i + 1) * g)
            records.append({"step": batch.step, "prompt_index": p, "example_id": ex["id"],
                            "prompt": self.task.prompt(ex, style),
                            "completions": [{"text": texts[r], "reward": self._step_rewards[r],
                                             "advantage": round(float(batch.advantages[r]), 6)} for r in rows]})
        records = gather_objects(self.accelerator, records)
        if log is not None:
            for rec in sorted(records, key=lambda r: r["prompt_index"]):
                log.write(rec)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_model_hook(self, models, weights, output_dir) -> None:
        """accelerate's save_state writes optimizer and RNG states; the policy goes in our format
        (trainable weights only, without wrapper prefixes: loadable with any process count)."""
        weights.clear()
        if self.is_main:
            ckpt.save_policy(self.policy, Path(output_dir))
            if self.ema is not None:
                self.ema.save(Path(output_dir))

    def _load_model_hook(self, models, input_dir) -> None:
        ckpt.load_policy(self.policy, Path(input_dir))
        if self.ema is not None:
            self.ema.load(Path(input_dir))
        models.clear()

    def _write_checkpoint(self, path: Path) -> None:
        def fill(tmp: Path) -> None:
            self.accelerator.save_state(str(tmp))
            self.accelerator.wait_for_everyone()
            if self.is_main:
                if hasattr(self.adapter.tokenizer, "save_pretrained"):
                    self.adapter.tokenizer.save_pretrained(tmp)
                k = self.run.rollout.num_prompts
                epoch, index = divmod(self.state.step * k, len(self.train_examples))
                state = {"format": ckpt.FORMAT, "step": self.state.step, "config": to_dict(self.run),
                         "data_position": {"prompts_seen": self.state.step * k, "epoch": epoch, "index_in_epoch": index},
                         "num_processes": self.accelerator.num_processes, "train_state": asdict(self.state)}
                atomic_write_text(tmp / ckpt.STATE_FILE, json.dumps(state, indent=1) + "\n")
                ckpt.write_manifest(tmp)

        collective_write_dir(self.accelerator, path, fill)

    def save_checkpoint(self) -> Path:
        """Full state at ``state.step`` (atomic), then retention of the last ``keep_checkpoints``."""
        path = ckpt.step_dir(self.run_dir, self.state.step)
        self._write_checkpoint(path)
        if self.is_main:
            ckpt.prune(self.run_dir, self.run.output.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, RNG states and the training state; one-line errors when the
        checkpoint is corrupt or was written by a different run configuration."""
        problem = None
        if self.is_main:  # checksums are read once, by the main process
            try:
                ckpt.verify(path)
            except UsageError as exc:
                problem = str(exc)
        problem = broadcast_from_main(self.accelerator, problem)
        if problem:
            raise UsageError(problem)
        saved = ckpt.verify(path, checksums=False)
        changes = ckpt.config_changes(saved["config"], to_dict(self.run))
        if changes:
            raise UsageError(f"checkpoint {str(path)!r} belongs to another configuration ({'; '.join(changes[:3])}); "
                             "resume with the same settings or use a new --run-dir")
        try:
            self.accelerator.load_state(str(path))
        except Exception as exc:  # damaged files fail in many ways (safetensors, pickle, zip, torch)
            why = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
            why = f"{type(exc).__name__}: {why}" if why else type(exc).__name__
            raise UsageError(f"checkpoint {str(path)!r} could not be loaded ({why}); delete it to resume from an "
                             "earlier one, or run without --resume") from None
        self.state = TrainState(**saved["train_state"])

    def start(self, resume: bool = False) -> Path | None:
        """Before training: with ``resume``, load the run folder's newest checkpoint (returned);
        without, refuse a folder holding another run's step checkpoints (retention would delete the
        new run's own ones, and a later --resume could pick the old ones)."""
        if self.run_dir is None:
            if resume:
                raise UsageError("--resume needs a run folder")
            return None
        path = None
        if resume:
            path = ckpt.latest(self.run_dir)
            self.load_checkpoint(path)
        elif self.run.output.checkpoint_every and ckpt.step_checkpoints(self.run_dir):
            raise UsageError(f"{str(ckpt.checkpoints_dir(self.run_dir))!r} holds checkpoints of an earlier run: pass "
                             "--resume to continue it, or delete them or choose another --run-dir")
        if self.is_main:
            ckpt.clean_temporary(self.run_dir)
        self.accelerator.wait_for_everyone()
        return path

    def load_best(self) -> int:
        """Put the best-validation weights into the policy; returns their step."""
        best = self.state.best
        path = ckpt.checkpoints_dir(self.run_dir) / ckpt.BEST
        if best is None:
            raise UsageError("eval.select=best needs validation during training (eval.every > 0)")
        saved = ckpt.verify(path, checksums=False)  # load_checkpoint checks the checksums
        if saved["step"] != best["step"]:
            raise UsageError(f"{str(path)!r} holds step {saved['step']}, not the best step {best['step']} of this run")
        state = self.state
        self.load_checkpoint(path)
        self.state = state
        return best["step"]

    def save(self, path: Path) -> None:
        """The policy (or its LoRA adapters; their weight average with ``optim.ema_decay``) and tokenizer
        in Hugging Face format, written atomically."""
        state_dict = self.accelerator.get_state_dict(self.wrapped) if self.sharded_states else None

        def write(tmp: Path) -> None:
            self.policy.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
            if hasattr(self.adapter.tokenizer, "save_pretrained"):
                self.adapter.tokenizer.save_pretrained(tmp)

        if self.is_main:
            with self._scored_weights():
                atomic_write_dir(path, write)
        self.accelerator.wait_for_everyone()

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

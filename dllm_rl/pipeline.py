"""Composes a run from names: resolve the config, build task/algorithm/model from the registry,
score the base model, train, score again, write one results file."""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, registry
from .config import RunConfig, from_dict, load_yaml, merge, parse_override, set_path, to_dict
from .distributed import checked_on_main
from .errors import UsageError
from .evaluation import decoding_record
from .models.adapter import ModelAdapter
from .results import SCHEMA, result_filename, without_seconds, write_result
from .rl.algorithm import Algorithm
from .task import Task


def resolve_config(algo: str | None = None, task: str | None = None, model: str | None = None,
                   recipe: str | None = None, sets: tuple[str, ...] = (), seed: int | None = None,
                   training: bool = True) -> RunConfig:
    """Defaults < registry presets < recipe < command-line names and seed < ``--set``; ``training``
    False (evaluation only) skips the checks of settings only training uses."""
    recipe_data = load_yaml(recipe) if recipe else {}
    for section in ("algorithm", "task"):
        if isinstance(recipe_data.get(section), str):
            recipe_data[section] = {"name": recipe_data[section]}
    if isinstance(recipe_data.get("model"), str):
        recipe_data["model"] = {"name": recipe_data["model"]}
    overrides = [parse_override(s) for s in sets]
    names = {"model": model, "task": task, "algorithm": algo}
    for kind in names:
        for key, value in overrides:
            if key == f"{kind}.name":
                names[kind] = value
        if names[kind] is None:
            names[kind] = (recipe_data.get(kind) or {}).get("name") or getattr(RunConfig(), kind).name
    model_entry = registry.model(names["model"])  # unknown names fail here, with the valid ones listed
    user_data = names["task"] == "data" or names["task"].startswith("data:")  # --task data:PATH (docs/data.md)
    task_kind = "data" if user_data else names["task"]
    registry.get("tasks", task_kind)
    registry.get("algorithms", names["algorithm"])
    data: dict[str, Any] = {}
    for preset in registry.presets(model_entry.name, task_kind, names["algorithm"], model_entry.info.get("family")):
        data = merge(data, preset)
    data = merge(data, recipe_data)
    for kind, name in names.items():
        set_path(data, f"{kind}.name", name)
    if seed is not None:
        data["seed"] = seed
    for key, value in overrides:
        set_path(data, key, value)
    run = from_dict(RunConfig, data)
    task_obj, _ = build_task(run), build_algorithm(run)  # validate plugin params now, not after pretraining
    check_against_task(run, task_obj, training, model_entry.info.get("prompt_style"))
    if user_data:  # named by content (data:NAME@HASH): results files, compare columns, the tiny model's cache
        run.task.params = {"path": task_obj.source, **run.task.params}
        run.task.name = task_obj.name
    return run


def require_train_examples(task: Task, name: str) -> None:
    """One line before any model loads when training (or the tiny model's pretraining) would find no
    training examples; a task may say why in ``no_train_hint``."""
    if not task.examples("train"):
        hint = getattr(task, "no_train_hint", "")
        raise UsageError(f"task {name!r} has no training examples" + (f" ({hint})" if hint else ""))


def check_against_task(run: RunConfig, task: Task, training: bool = True, family_style: str | None = None) -> None:
    """Settings that only the task can judge, checked before any work: the splits named exist, and
    at the generation lengths (eval.lengths and rollout.gen_length, else the task's protocol for a
    prompt style) the decoding has at least one step per block (evaluation: L/2 greedy steps). The
    prompt style is the run's, else the family's, else either (the model tells once it loads)."""
    e, r = run.eval, run.rollout
    for key, split in (("eval.split", e.split), ("eval.val_split", e.val_split if e.every and training else None)):
        if split is not None and split not in task.splits:
            raise UsageError(f"{key} {split!r} is not a split of task {run.task.name!r}; valid: {', '.join(task.splits)}")
    problems = []
    known = run.model.prompt_style or family_style
    for style in [known] if known else ["direct", "chat"]:  # unknown until the model loads: fail if every style fails
        try:
            lengths = list(task.protocol(style).lengths)
        except Exception:  # a task may support one style only
            continue
        problems.append(_decoding_problem(run, e.lengths or lengths, r.gen_length or lengths[0] if training else None))
    if problems and all(problems):
        raise UsageError(problems[0])


def _decoding_problem(run: RunConfig, eval_lengths: list[int], rollout_length: int | None) -> str | None:
    """Why evaluation (L/2 greedy steps) or rollouts (at ``rollout_length``; None: no rollouts) cannot
    decode these lengths in the run's blocks."""
    r = run.rollout
    for length in eval_lengths:
        blocks = -(-length // r.block_length)
        if max(1, length // 2) < blocks:
            least = -(-length // max(1, length // 2))
            return (f"rollout.block_length={r.block_length} is too short to evaluate at L={length}: its L/2 = "
                    f"{length // 2} greedy steps cannot cover {blocks} blocks; use blocks of at least {least} tokens")
    if rollout_length is None:
        return None
    steps, blocks = r.steps or max(1, rollout_length // 2), -(-rollout_length // r.block_length)
    if (r.threshold is None or r.steps is not None) and steps < blocks:
        return (f"rollout: {steps} denoising steps cannot cover the {blocks} blocks of gen_length {rollout_length} / "
                f"block_length {r.block_length}; raise rollout.steps or rollout.block_length")
    return None


def _plugin_config(cls, params: dict[str, Any], where: str):
    return from_dict(cls.Config, params, where)


def build_task(run: RunConfig) -> Task:
    name, params = run.task.name, run.task.params
    if name == "data" or name.startswith("data:"):  # the user's own data: the path (or a spec's settings) into params
        cls = registry.get("tasks", "data").load()
        params = cls.params_for(name, params)
    else:
        cls = registry.get("tasks", name).load()
    return cls(_plugin_config(cls, params, "task"))


def build_algorithm(run: RunConfig) -> Algorithm:
    cls = registry.get("algorithms", run.algorithm.name).load()
    algorithm = cls(_plugin_config(cls, run.algorithm.params, "algorithm"), seed=run.seed)
    algorithm.rollout = run.rollout
    check = getattr(algorithm, "check_rollout", None)  # an objective that models the sampler refuses rollouts it cannot
    if check is not None:
        check(run.rollout)
    return algorithm


def load_model(run: RunConfig, task: Task, progress=None) -> ModelAdapter:
    """The model family's ``load(run, task, progress) -> ModelAdapter``."""
    loader = registry.model(run.model.name).load()
    return loader(run, task, progress)


def gen_length_of(run: RunConfig, task: Task, style: str) -> int:
    return run.rollout.gen_length or task.protocol(style).lengths[0]


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"dllm_rl": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version(),
            "cpu": torch.backends.cpu.get_cpu_capability()}  # kernels differ by ISA: CPU runs repeat bit for bit on the same one


def run_pipeline(run: RunConfig, progress=None, on_step=None, train: bool = True, final_eval: bool = True,
                 resume: bool = False) -> dict[str, Any]:
    """Train then evaluate; writes and returns the results dict (``_path`` holds the file written).

    Under ``accelerate launch`` every process runs this; rollouts and evaluations are sharded, and
    only the main process writes files. ``resume`` continues from the run folder's newest checkpoint."""
    from accelerate import PartialState

    from . import checkpoint as ckpt
    from .outputs import check_outputs, check_space, checkpoint_bytes
    from .progress import RunProgress
    from .runlog import write_run_info
    from .trainer import Trainer

    procs = PartialState(cpu=not torch.cuda.is_available())
    run_name = result_filename(run.model.name, run.task.name, run.algorithm.name, run.seed, run.output.label)[:-5]
    results_dir, run_dir = Path(run.output.results_dir), Path(run.output.run_dir) / run_name
    path = results_dir / f"{run_name}.json"
    if resume:
        ckpt.latest(run_dir)  # nothing to resume: one line before any folder is made or model loaded
    checked_on_main(procs, lambda: check_outputs(results_dir, path, run_dir))
    if progress is None or isinstance(progress, bool):
        progress = RunProgress(enabled=progress is not False and procs.is_main_process)
    elif not isinstance(progress, RunProgress):
        progress = RunProgress(progress)  # a rich Progress the caller started
    with progress:
        return _run(run, procs, run_dir, path, progress, on_step, train, final_eval, resume)


def _run(run: RunConfig, procs, run_dir: Path, path: Path, progress, on_step, train: bool, final_eval: bool,
         resume: bool) -> dict[str, Any]:
    from .atomic import reporting_write_errors
    from .outputs import check_space, checkpoint_bytes
    from .runlog import provenance, write_run_info
    from .trainer import Trainer

    task, algorithm = build_task(run), build_algorithm(run)
    if train:
        require_train_examples(task, run.task.name)
    timing: dict[str, Any] = {}
    t0 = time.perf_counter()
    with procs.main_process_first():  # a family that builds and caches its base model does it once
        adapter = load_model(run, task, progress.rich)
    style = adapter.prompt_style
    gen_length = gen_length_of(run, task, style)
    protocol = task.protocol(style)
    lengths = run.eval.lengths or list(protocol.lengths)
    problem = _decoding_problem(run, lengths, gen_length if train else None)  # now for the model's own prompt style
    if problem:
        raise UsageError(problem)
    timing["model_s"] = round(time.perf_counter() - t0, 2)
    e = run.eval
    if train:
        checkpoints = bool(run.output.checkpoint_every) or (e.select == "best" and bool(e.every))
        needed = checkpoint_bytes(adapter.model, checkpoints, run.output.save_model)
        checked_on_main(procs, lambda: check_space(run_dir, needed, "one checkpoint" + (
            " and the final model" if run.output.save_model else "")))
    trainer = Trainer(run, adapter, task, algorithm, gen_length, run_dir=run_dir, on_step=on_step, progress=progress)
    resumed_from = trainer.start(resume)
    info = {"num_processes": procs.num_processes, "distributed_type": str(procs.distributed_type),
            "resumed_from": None if resumed_from is None else str(resumed_from)}

    def run_info() -> None:
        with reporting_write_errors(run_dir):
            write_run_info(run_dir, to_dict(run), info)

    checked_on_main(procs, run_info)
    base = None
    if e.base:
        t = time.perf_counter()
        base = _base_metrics(trainer, run_dir, e.split, lengths, reuse=resume)
        timing["base_eval_s"] = round(time.perf_counter() - t, 2)
    state = None
    if train:
        t = time.perf_counter()
        state = trainer.train()
        timing["train_s"] = round(time.perf_counter() - t, 2)
        timing["step_s"] = state.step_seconds
    evaluated = "last"
    if e.select == "best" and (train or final_eval):  # before saving, so `final` holds the scored weights
        evaluated = f"best (validation, step {trainer.load_best()})"
    if train and run.output.save_model:
        trainer.save(run_dir / "final")
    metrics = None
    if final_eval:
        if trainer.ema is not None:
            evaluated += f", weight average (EMA, decay {trainer.ema.decay})"
        t = time.perf_counter()
        metrics = trainer.evaluate(e.split, lengths, phase=f"final evaluation ({e.split})")
        timing["eval_s"] = round(time.perf_counter() - t, 2)
    trainer.finish()
    timing["total_s"] = round(time.perf_counter() - t0, 2)
    timing["eval_seconds"] = {k: round(row["seconds"], 2) for k, row in (metrics or {}).items()}
    r = run.rollout
    result = {
        "schema": SCHEMA,
        "model": run.model.name, "task": run.task.name, "algorithm": run.algorithm.name, "seed": run.seed,
        "label": run.output.label,
        "config": to_dict(run),
        "algorithm_config": dataclasses.asdict(algorithm.config),
        "task_config": dataclasses.asdict(task.config),
        "versions": versions(),
        "provenance": provenance({"algorithm": run.algorithm.name, "task": run.task.name, "model": run.model.name}),
        "protocol": {"split": e.split, "lengths": lengths, "primary_metric": protocol.primary_metric, "style": style,
                     "decoding": decoding_record(run),
                     "shots": protocol.shots, "prompt": protocol.prompt, "parser": protocol.parser},
        "base": without_seconds(base),
        "metrics": without_seconds(metrics),
        "training": None if state is None else {
            "steps": state.step, "rollouts_per_step": r.num_prompts * r.group_size, "gen_length": gen_length,
            "rollout_nfe_per_sample": _mean_rollout_nfe(state), "curve": state.curve, "validation": state.validation,
            "best_validation": state.best, "evaluated_weights": evaluated},
        "timing": timing,
    }
    final = run_dir / "final" if train and run.output.save_model else None

    def results_file() -> None:
        with reporting_write_errors(path, lambda: f"the trained model is in {str(final)!r}" if final else
                                    "rerun with --resume to continue from the last checkpoint"):
            write_result(path, result)

    checked_on_main(procs, results_file)  # also the barrier: every process returns once the file is written
    result["_path"] = str(path)
    return result


def _base_metrics(trainer, run_dir: Path, split: str, lengths: list[int], reuse: bool) -> dict[str, Any]:
    """The base model's scores (the frozen reference policy, so also right after a resume); a
    resumed run reuses the ones its first launch saved in the run folder."""
    import json

    from .atomic import atomic_write_text

    path = run_dir / "base_metrics.json"
    key = {"split": split, "lengths": lengths, "max_examples": trainer.run.eval.max_examples,
           "block_length": trainer.run.rollout.block_length}
    if reuse:
        try:
            saved = json.loads(path.read_text())
            if saved["key"] == key:
                return saved["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    metrics = trainer.evaluate(split, lengths, base=True, phase=f"base model evaluation ({split})")

    def save() -> None:
        with trainer.checkpoints.reporting_write_errors(path):
            atomic_write_text(path, json.dumps({"key": key, "metrics": metrics}, indent=1) + "\n")

    checked_on_main(trainer.accelerator, save)
    return metrics


def _mean_rollout_nfe(state) -> float:
    """Forward passes per rollout sample, averaged over the run's steps (threshold decoding and early
    stop make it vary from step to step)."""
    values = [c["rollout_nfe"] for c in state.curve if "rollout_nfe" in c]
    return round(sum(values) / len(values), 3) if values else state.rollout_nfe

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
from .errors import UsageError
from .evaluation import evaluate
from .models.adapter import ModelAdapter
from .results import SCHEMA, result_filename, without_seconds, write_result
from .rl.algorithm import Algorithm
from .task import Task


def resolve_config(algo: str | None = None, task: str | None = None, model: str | None = None,
                   recipe: str | None = None, sets: tuple[str, ...] = (), seed: int | None = None) -> RunConfig:
    """Defaults < registry presets < recipe < command-line names and seed < ``--set``."""
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
    registry.get("models", names["model"])  # unknown names fail here, with the valid ones listed
    registry.get("tasks", names["task"])
    registry.get("algorithms", names["algorithm"])
    data: dict[str, Any] = {}
    for preset in registry.presets(names["model"], names["task"], names["algorithm"]):
        data = merge(data, preset)
    data = merge(data, recipe_data)
    for kind, name in names.items():
        set_path(data, f"{kind}.name", name)
    if seed is not None:
        data["seed"] = seed
    for key, value in overrides:
        set_path(data, key, value)
    run = from_dict(RunConfig, data)
    build_task(run), build_algorithm(run)  # validate plugin params now, not after pretraining
    return run


def _plugin_config(cls, params: dict[str, Any], where: str):
    return from_dict(cls.Config, params, where)


def build_task(run: RunConfig) -> Task:
    cls = registry.get("tasks", run.task.name).load()
    return cls(_plugin_config(cls, run.task.params, "task"))


def build_algorithm(run: RunConfig) -> Algorithm:
    cls = registry.get("algorithms", run.algorithm.name).load()
    algorithm = cls(_plugin_config(cls, run.algorithm.params, "algorithm"), seed=run.seed)
    algorithm.rollout = run.rollout
    return algorithm


def load_model(run: RunConfig, task: Task, progress=None) -> ModelAdapter:
    """The model family's ``load(run, task, progress) -> ModelAdapter``."""
    loader = registry.get("models", run.model.name).load()
    return loader(run, task, progress)


def gen_length_of(run: RunConfig, task: Task, style: str) -> int:
    return run.rollout.gen_length or task.protocol(style).lengths[0]


def _writable(folder: str) -> Path:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"output folder {folder!r} is not writable ({exc.strerror or exc}); choose another with --results-dir/--run-dir") from None
    return path


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"dllm_rl": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def run_pipeline(run: RunConfig, progress=None, on_step=None, train: bool = True, final_eval: bool = True) -> dict[str, Any]:
    """Train then evaluate; writes and returns the results dict (``_path`` holds the file written)."""
    from .trainer import Trainer

    results_dir = _writable(run.output.results_dir)
    run_name = result_filename(run.model.name, run.task.name, run.algorithm.name, run.seed, run.output.label)[:-5]
    run_dir = _writable(run.output.run_dir) / run_name
    task, algorithm = build_task(run), build_algorithm(run)
    timing: dict[str, Any] = {}
    t0 = time.perf_counter()
    adapter = load_model(run, task, progress)
    style = adapter.prompt_style
    gen_length = gen_length_of(run, task, style)
    protocol = task.protocol(style)
    lengths = run.eval.lengths or list(protocol.lengths)
    timing["model_s"] = round(time.perf_counter() - t0, 2)
    e = run.eval
    base = None
    if e.base:
        t = time.perf_counter()
        base = evaluate(adapter, task, e.split, lengths, e.batch_size, e.max_examples, run.rollout.block_length)
        timing["base_eval_s"] = round(time.perf_counter() - t, 2)
    trainer = Trainer(run, adapter, task, algorithm, gen_length, run_dir=run_dir, on_step=on_step)
    state = None
    if train:
        t = time.perf_counter()
        state = trainer.train()
        timing["train_s"] = round(time.perf_counter() - t, 2)
        timing["step_s"] = state.step_seconds
        if run.output.save_model:
            trainer.save(run_dir / "final")
    metrics = None
    if final_eval:
        t = time.perf_counter()
        metrics = evaluate(adapter, task, e.split, lengths, e.batch_size, e.max_examples, run.rollout.block_length)
        timing["eval_s"] = round(time.perf_counter() - t, 2)
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
        "protocol": {"split": e.split, "lengths": lengths, "primary_metric": protocol.primary_metric, "style": style,
                     "decoding": f"greedy, low-confidence remasking, blocks of {r.block_length}, L/2 steps"},
        "base": without_seconds(base),
        "metrics": without_seconds(metrics),
        "training": None if state is None else {
            "steps": state.step, "rollouts_per_step": r.num_prompts * r.group_size, "gen_length": gen_length,
            "rollout_nfe_per_sample": state.rollout_nfe, "curve": state.curve, "validation": state.validation},
        "timing": timing,
    }
    path = results_dir / f"{run_name}.json"
    write_result(path, result)
    result["_path"] = str(path)
    return result

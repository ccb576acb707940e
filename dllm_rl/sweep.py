"""Reproducible experiment grids: algorithms x tasks x seeds (x labelled variants), one normal results
file per run (``run_pipeline``), run sequentially or by N worker processes, resumable.

A run whose results file already exists with the same configuration is skipped; one that exists with
a different configuration is a conflict (refused unless ``force``), so a folder never silently mixes
settings. Each invocation is appended to ``sweeps.jsonl`` in the output folder (command, grid, outcome)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import registry
from .config import RunConfig, config_differences, load_yaml, to_dict
from .errors import UsageError
from .atomic import atomic_write_text
from .results import SCHEMA, result_filename


@dataclass
class Grid:
    """What to run. ``algorithms`` maps each name to its own overrides (e.g. a tuned learning rate);
    ``variants`` maps a label to overrides applied to every run (e.g. ``k1: [algorithm.kl=k1]``); the
    label ``""`` is the plain configuration, so a grid can hold the default next to its variants."""

    algorithms: dict[str, list[str]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    model: str | None = None
    recipe: str | None = None
    sets: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)
    out: str = "runs/results"
    run_dir: str | None = None


def _overrides(value: Any, where: str) -> list[str]:
    """``{key: value}`` or ``[key=value, ...]`` from a grid file, as ``--set`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"grid {where}: expected a mapping of settings or a list of key=value, got {value!r}")


def load_grid(path: str) -> Grid:
    """A YAML grid file: algorithms (list, or mapping name -> settings), tasks, seeds, model, recipe,
    set (settings for every run), variants (label -> settings), out, run_dir."""
    data = load_yaml(path)
    known = {"algorithms", "tasks", "seeds", "model", "recipe", "set", "variants", "out", "run_dir"}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"grid file {path!r}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    algos = data.get("algorithms") or []
    if isinstance(algos, list):
        algos = {a: [] for a in algos}
    elif isinstance(algos, dict):
        algos = {a: _overrides(v, f"algorithms.{a}") for a, v in algos.items()}
    else:
        raise UsageError(f"grid file {path!r}: algorithms must be a list or a mapping")
    tasks, seeds = data.get("tasks") or [], data.get("seeds", [0])
    if isinstance(tasks, str):
        tasks = [tasks]
    if isinstance(seeds, int):
        seeds = [seeds]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UsageError(f"grid file {path!r}: seeds must be integers, got {seeds!r}")
    variants = {str(k): _overrides(v, f"variants.{k}") for k, v in (data.get("variants") or {}).items()}
    return Grid(algorithms=algos, tasks=list(tasks), seeds=list(seeds), model=data.get("model"), recipe=data.get("recipe"),
                sets=_overrides(data.get("set"), "set"), variants=variants, out=data.get("out") or "runs/results",
                run_dir=data.get("run_dir"))


@dataclass
class Job:
    algorithm: str
    task: str
    seed: int
    label: str
    run: RunConfig
    path: Path
    status: str = "todo"  # todo | done | conflict
    detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.run.model.name} {self.task} {self.algorithm}{f' [{self.label}]' if self.label else ''} seed {self.seed}"


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's configuration minus where its files go (moving a results folder is not a change)."""
    return {k: v for k, v in config.items() if k != "output"} | {"label": (config.get("output") or {}).get("label", "")}


def _own_label(algo: str, sets: list[str]) -> tuple[str, list[str]]:
    """An algorithm's own label from its grid settings (``output.label``, e.g. the tuned rate ``lr3e-5``),
    put before the variant's; returned with the remaining settings."""
    own = [s for s in sets if s.split("=", 1)[0].strip() == "output.label"]
    if not own:
        return "", sets
    value = own[-1].split("=", 1)[1].strip()
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    if not isinstance(value, str):
        raise UsageError(f"grid algorithms.{algo}: output.label must be a string, got {value!r}")
    return value, [s for s in sets if s not in own]


def plan(grid: Grid, force: bool = False) -> list[Job]:
    """Resolve every run's configuration (bad settings fail here, before anything runs) and mark
    which are done (same configuration already in the output folder) or in conflict."""
    from .pipeline import resolve_config

    if not grid.algorithms or not grid.tasks or not grid.seeds:
        raise UsageError("a sweep needs at least one algorithm, one task and one seed (--algo, --task, --seeds or --grid)")
    for label in grid.variants:  # "" = the plain configuration (no overrides, no label) alongside labelled ones
        if label and result_filename("m", "t", "a", 0, label) != f"m__t__a__{label}__seed0.json":
            raise UsageError(f"variant label {label!r} must be letters, digits, '-', '_' or '.' (or \"\" for the plain run)")
    variants = grid.variants or {"": []}
    jobs = []
    for algo, algo_sets in grid.algorithms.items():
        for task in grid.tasks:
            algo_label, algo_sets = _own_label(algo, algo_sets)
            for variant_label, variant_sets in variants.items():
                label = "-".join(x for x in (algo_label, variant_label) if x)
                for seed in grid.seeds:
                    sets = (*grid.sets, *algo_sets, *variant_sets, f"output.results_dir={json.dumps(grid.out)}",
                            f"output.label={json.dumps(label)}",
                            *([f"output.run_dir={json.dumps(grid.run_dir)}"] if grid.run_dir else []))
                    run = resolve_config(algo, task, grid.model, grid.recipe, sets, seed)
                    path = Path(grid.out) / result_filename(run.model.name, run.task.name, run.algorithm.name, run.seed, label)
                    jobs.append(Job(run.algorithm.name, run.task.name, seed, label, run, path))
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.path in seen:
            raise UsageError(f"two runs of the sweep write {job.path.name} ({seen[job.path].name}); give the variants distinct labels")
        seen[job.path] = job
        diff = None if force else _diff_with_existing(job)
        if diff is not None:
            job.status, job.detail = ("conflict", "; ".join(diff[:3])) if diff else ("done", "")
    return jobs


def _diff_with_existing(job: Job) -> list[str] | None:
    """How the results file at the job's path differs from its configuration ([] = same run);
    None when there is no readable results file there (the run is still to do)."""
    try:
        old = json.loads(job.path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # missing or unreadable: run (again)
    if old.get("schema") != SCHEMA:
        return None
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in config_differences(
        _comparable(_effective(old.get("config") or {}, job.run, old)), _comparable(_effective(to_dict(job.run), job.run)),
        _comparable(_defaults(job.run)))]


def _effective(config: dict[str, Any], run: RunConfig, ran: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config`` with every algorithm and task option filled in: the values results file ``ran``
    records its run used (``algorithm_config``, ``task_config``), else today's defaults. A default
    that changed after a run is then a difference; an option added after it is not."""
    out = dict(config)
    for section in ("algorithm", "task"):
        entry = dict(out.get(section) or {})
        name = getattr(run, section).name
        if entry.get("name", name) != name:
            continue
        filled = json.loads(json.dumps(_defaults(run)[section]["params"]))
        recorded = (ran or {}).get(f"{section}_config")
        if isinstance(recorded, dict):
            filled.update(recorded)
        entry["params"] = {**filled, **(entry.get("params") or {})}
        out[section] = entry
    return out


def _defaults(run: RunConfig) -> dict[str, Any]:
    """``RunConfig()``'s settings plus the defaults of the run's algorithm and task options: a results
    file made before an option existed was made with its default."""
    defaults = to_dict(RunConfig())
    for section in ("algorithm", "task"):
        cls = registry.get(f"{section}s", getattr(run, section).name).load()
        defaults[section] = {"name": getattr(run, section).name, "params": dataclasses.asdict(cls.Config())}
    return defaults


def _finished_meanwhile(job: Job) -> bool:
    """Whether a results file with this job's configuration appeared after planning."""
    return _diff_with_existing(job) == []


def _run_job(run: RunConfig) -> dict[str, Any]:
    """Worker entry point: one pipeline run, summarised (the results file is the real output)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from .pipeline import run_pipeline

    transformers.utils.logging.set_verbosity_error()  # worker processes: no per-run library chatter
    transformers.utils.logging.disable_progress_bar()
    result = run_pipeline(run)
    return summarize(result)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    primary = result["protocol"]["primary_metric"]
    first = lambda block: next(iter((block or {}).values()), {}).get(primary)
    return {"path": result["_path"], "metric": primary, "after": first(result["metrics"]), "base": first(result["base"]),
            "seconds": result["timing"]["total_s"]}


def _warm_caches(jobs: list[Job]) -> None:
    """Let each job's model family build what it caches (the tiny family: its pretrained base) once,
    before parallel workers would race to build the same one: a family module's optional
    ``prepare(run, task)``."""
    import inspect

    from . import registry
    from .pipeline import build_task

    for job in jobs:
        loader = registry.model(job.run.model.name).load()
        prepare = getattr(inspect.getmodule(loader), "prepare", None)
        if prepare is not None:
            prepare(job.run, build_task(job.run))  # cached after the first


def execute(jobs: list[Job], workers: int = 1, log: Callable[[str], None] = print) -> dict[str, int]:
    """Run the jobs still to do; returns counts of ran / skipped / failed."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    conflicts = [j for j in jobs if j.status == "conflict"]
    if conflicts:
        j = conflicts[0]
        raise UsageError(f"{j.path} exists with another configuration ({j.detail}); "
                         f"{len(conflicts)} such run(s): use another output folder, a variant label, or --force to rerun")
    todo = [j for j in jobs if j.status == "todo"]
    total = len(jobs)
    counts = {"ran": 0, "skipped": total - len(todo), "failed": 0}
    for i, j in enumerate(jobs):
        if j.status == "done":
            log(f"[{i + 1}/{total}] {j.name}: done already, skipped ({j.path.name})")

    def report(job: Job, outcome: dict[str, Any] | None, error: BaseException | None) -> None:
        index = jobs.index(job) + 1
        if error is not None:
            counts["failed"] += 1
            log(f"[{index}/{total}] {job.name}: FAILED ({type(error).__name__}: {error})")
            return
        counts["ran"] += 1
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"
        log(f"[{index}/{total}] {job.name}: {outcome['metric']} {fmt(outcome['after'])} "
            f"(base {fmt(outcome['base'])}) in {outcome['seconds']:.0f}s -> {job.path.name}")

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            if _finished_meanwhile(job):  # e.g. by another sweep writing to the same folder
                counts["skipped"] += 1
                log(f"[{jobs.index(job) + 1}/{total}] {job.name}: finished meanwhile, skipped ({job.path.name})")
                continue
            log(f"[{jobs.index(job) + 1}/{total}] {job.name}: running")
            try:
                outcome = _run_job(job.run)
            except UsageError:
                raise
            except Exception as exc:  # one failed run must not lose the others
                report(job, None, exc)
            else:
                report(job, outcome, None)
        return counts

    import multiprocessing

    _warm_caches(todo)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with _sigterm_as_interrupt():
            futures = {pool.submit(_run_job, job.run): job for job in todo}
            log(f"running {len(todo)} job(s) on {min(workers, len(todo))} worker process(es)")
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    report(job, fut.result(), None)
                except Exception as exc:
                    report(job, None, exc)
    except BaseException:  # interrupted or killed: stop the workers too, so no orphan keeps writing results
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    pool.shutdown()
    return counts


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (in the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record(out: str, grid: Grid, jobs: list[Job], counts: dict[str, int], started: float) -> None:
    """Append this invocation to ``<out>/sweeps.jsonl``: the command, the grid and what happened."""
    path = Path(out) / "sweeps.jsonl"
    entry = {"command": ["dllm-rl", *sys.argv[1:]], "grid": grid.__dict__, "runs": [j.path.name for j in jobs],
             **counts, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
             "seconds": round(time.time() - started, 1)}
    previous = path.read_text() if path.is_file() else ""
    atomic_write_text(path, previous + json.dumps(entry) + "\n")

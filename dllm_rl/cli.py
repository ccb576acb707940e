"""The ``dllm-rl`` command line: run (train then evaluate), train, evaluate, compare, sweep, list, pretrain."""
from __future__ import annotations

import csv
import io
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UsageError

console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: no wrapped table cells
err_console = Console(stderr=True)

RUN_OPTIONS = [
    click.option("--algo", "--algorithm", "algo", default=None, help="Algorithm name (see `dllm-rl list`). Default: espo."),
    click.option("--task", default=None, help="Task name. Default: sudoku."),
    click.option("--model", default=None, help="Model family or alias. Default: tiny (built in)."),
    click.option("--seed", type=int, default=None, help="Run seed (sampling noise, masks, data order)."),
    click.option("--recipe", type=click.Path(dir_okay=False), default=None, help="YAML recipe of settings."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting, e.g. optim.lr=1e-4 (repeatable)."),
    click.option("--results-dir", default=None, help="Where the results JSON goes. Default: runs/results/."),
    click.option("--run-dir", default=None, help="Where checkpoints and metrics go. Default: runs/."),
    click.option("--trust-remote-code", is_flag=True, default=False,
                 help="Allow an hf: model to run Python code shipped with its checkpoint (off by default)."),
    click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run folder "
                 "(written every output.checkpoint_every steps)."),
]


def run_options(fn):
    for opt in reversed(RUN_OPTIONS):
        fn = opt(fn)
    return fn


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _resolve(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code=False, adapter=None,
             training=True):
    from .pipeline import resolve_config

    sets = tuple(sets) + tuple(f"output.{k}={v}" for k, v in (("results_dir", results_dir), ("run_dir", run_dir)) if v)
    sets += ("model.trust_remote_code=true",) if trust_remote_code else ()
    sets += (f"model.adapter={adapter}",) if adapter else ()
    return resolve_config(algo, task, model, recipe, sets, seed, training=training)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False,
                    disable=not (console.is_terminal or console.is_jupyter))  # logs get plain lines instead (dllm_rl.progress)


def _execute(run, train: bool, final_eval: bool, resume: bool = False):
    import torch
    from accelerate import PartialState

    from .pipeline import run_pipeline
    from .progress import RunProgress

    _quiet_libraries()
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:  # under `accelerate launch` only process 0 talks
        return run_pipeline(run, progress=False, train=train, final_eval=final_eval, resume=resume)
    console.print(f"[bold]dllm-rl[/] {'run' if final_eval else 'train'}: model={run.model.name} task={run.task.name} "
                  f"algorithm={run.algorithm.name} seed={run.seed} steps={run.optim.max_steps}")
    with _progress() as progress:
        result = run_pipeline(run, progress=RunProgress(progress), train=train, final_eval=final_eval, resume=resume)
    _print_summary(result)
    return result


def _print_summary(result):
    primary = result["protocol"]["primary_metric"]
    table = Table(title=f"{result['model']} + {result['algorithm']} on {result['task']} ({result['protocol']['split']} split)")
    table.add_column("L")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("after", justify="right")
    table.add_column("Δ", justify="right")
    lengths = (result["metrics"] or result["base"] or {}).keys()
    for length in lengths:
        row_b = (result["base"] or {}).get(length, {})
        row_a = (result["metrics"] or {}).get(length, {})
        for name in sorted({*row_a, *row_b}, key=lambda n: n != primary):
            if name in ("n", "nfe") or name.endswith("_stderr"):
                continue
            b, a = row_b.get(name), row_a.get(name)
            fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"
            delta = f"{100 * (a - b):+.1f}" if a is not None and b is not None else "-"
            table.add_row(length, name, fmt(b), fmt(a), delta)
    console.print(table)
    evaluated = (result.get("training") or {}).get("evaluated_weights")
    if evaluated and result["metrics"]:
        console.print(f"after = the {evaluated} weights")  # which checkpoint 'after' scores: last, best, EMA
    console.print(f"results: {result['_path']}  ({result['timing']['total_s']:.0f}s)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dllm-rl")
def cli():
    """RL post-training and evaluation of diffusion language models."""


@cli.command()
@run_options
def run(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code, resume):
    """Train with an RL algorithm, then evaluate; writes one results file."""
    _execute(_resolve(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code), train=True,
             final_eval=True, resume=resume)


@cli.command()
@run_options
def train(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code, resume):
    """Train only (checkpoint in the run folder); no test-split evaluation."""
    run_cfg = _resolve(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code)
    run_cfg.eval.base = False
    _execute(run_cfg, train=True, final_eval=False, resume=resume)


@cli.command()
@click.option("--task", default=None, help="Task name. Default: sudoku.")
@click.option("--model", default=None, help="Model family. Default: tiny.")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="A trained model folder (e.g. runs/<run>/final) to evaluate instead of the base model.")
@click.option("--adapter", "adapter_path", type=click.Path(exists=True, file_okay=False), default=None,
              help="A trained LoRA adapter folder (e.g. runs/<run>/final of a LoRA run) to load on the base --model.")
@click.option("--trust-remote-code", is_flag=True, default=False, help="Allow an hf: model to run its own code.")
@click.option("--split", default=None, help="Split to score. Default: test.")
@click.option("--lengths", default=None, help="Comma-separated generation lengths. Default: the task protocol's.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@click.option("--lm-eval", "lm_eval_tasks", default=None, metavar="TASKS",
              help="Score with lm-eval tasks instead (comma-separated names or YAML paths); --task then only picks the model's base.")
@click.option("--lm-eval-limit", default=None, metavar="N", help="Examples per lm-eval task (an integer, or a fraction below 1).")
@click.option("--lm-eval-include", multiple=True, type=click.Path(), metavar="PATH", help="Folder of extra lm-eval task YAML files (repeatable).")
@click.option("--lm-eval-fewshot", type=int, default=None, metavar="K", help="Override the lm-eval tasks' few-shot count.")
@click.option("--lm-eval-arg", "lm_eval_args", multiple=True, metavar="KEY=VALUE", help="lm-eval adapter setting, e.g. mc_samples=64 (repeatable).")
@click.option("--lm-eval-output", default=None, type=click.Path(dir_okay=False), help="Results JSON. Default: <run_dir>/lm-eval/<model>__<tasks>.json (runs/lm-eval/).")
def evaluate(task, model, checkpoint, adapter_path, trust_remote_code, split, lengths, recipe, sets, lm_eval_tasks,
             lm_eval_limit, lm_eval_include, lm_eval_fewshot, lm_eval_args, lm_eval_output):
    """Score a model on a task under the task's declared protocol (or on lm-eval tasks with --lm-eval)."""
    from pathlib import Path

    from .evaluation import evaluate as run_eval
    from .pipeline import build_task, load_model

    _quiet_libraries()
    if checkpoint and (Path(checkpoint) / "adapter_config.json").is_file():  # a LoRA run's output
        adapter_path, checkpoint = adapter_path or checkpoint, None
    run_cfg = _resolve(None, task, model, None, recipe, sets, None, None, trust_remote_code, adapter_path, training=False)
    task_obj = build_task(run_cfg)
    lm_eval = None
    if lm_eval_tasks is not None:
        try:
            from .lm_eval_adapter import LMEvalRequest
        except ModuleNotFoundError as exc:
            raise UsageError(f"--lm-eval needs the lm-eval package ({exc}); install it with pip install 'dllm-rl[lm-eval]'") from None
        lm_eval = LMEvalRequest.parse(lm_eval_tasks, lm_eval_limit, lm_eval_include, lm_eval_fewshot, lm_eval_args, lm_eval_output)
    try:
        lens = [int(x) for x in lengths.split(",")] if lengths else None
    except ValueError:
        raise UsageError(f"bad --lengths {lengths!r}: expected comma-separated integers such as 128,256") from None
    if lens is not None and (not lens or min(lens) < 1):
        raise UsageError(f"bad --lengths {lengths!r}: generation lengths must be at least 1")
    if lens is not None:
        from .pipeline import check_against_task

        run_cfg.eval.lengths = lens
        check_against_task(run_cfg, task_obj, training=False)
    split = split or run_cfg.eval.split
    if split not in task_obj.splits:
        raise UsageError(f"unknown split {split!r} for task {run_cfg.task.name!r}; valid: {', '.join(task_obj.splits)}")
    with _progress() as progress:
        adapter = load_model(run_cfg, task_obj, progress)
    if checkpoint:
        adapter.model = _load_checkpoint_folder(type(adapter.model), Path(checkpoint))
    if lm_eval is not None:
        lm_eval.run(adapter, run_cfg, console, checkpoint)
        return
    lens = lens or run_cfg.eval.lengths or list(task_obj.protocol(adapter.prompt_style).lengths)
    from .progress import RunProgress

    with _progress() as progress:
        bar = RunProgress(progress).bar(f"evaluating on {split}", None)
        res = run_eval(adapter, task_obj, split, lens, run_cfg.eval.batch_size, run_cfg.eval.max_examples, run_cfg, bar)
    table = Table(title=f"{run_cfg.model.name} on {run_cfg.task.name} ({split})")
    table.add_column("L")
    metric_names = [k for k in next(iter(res.values())) if k not in ("n", "nfe", "seconds") and not k.endswith("_stderr")]
    for name in metric_names + ["n", "nfe"]:
        table.add_column(name, justify="right")
    for length, row in res.items():
        table.add_row(length, *[f"{100 * row[k]:.1f}" for k in metric_names], str(row["n"]), str(row["nfe"]))
    console.print(table)


def _load_checkpoint_folder(model_class, folder):
    """A trained model folder (``runs/<run>/final``) via ``from_pretrained``; one line when it is not one."""
    if not (folder / "config.json").is_file():
        raise UsageError(f"checkpoint folder {str(folder)!r} has no config.json; expected a trained model folder "
                         "such as runs/<run>/final")
    try:
        return model_class.from_pretrained(folder).eval()
    except Exception as exc:  # truncated or foreign weights fail in many ways (safetensors, torch, json)
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"checkpoint folder {str(folder)!r} could not be loaded ({why}); is it complete?") from None


@cli.command()
@click.option("--model", required=True, help="The base model the adapter was trained on (family, alias, hf:ORG/NAME or folder).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), required=True, help="The trained LoRA adapter folder.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the merged checkpoint (written atomically).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
def merge(model, adapter, out, sets):
    """Fold a trained LoRA adapter into the base weights; the result loads with --model OUT."""
    from pathlib import Path

    from .models.lora import merge as merge_lora
    from .pipeline import build_task, load_model
    from .atomic import atomic_write_dir

    _quiet_libraries()
    run_cfg = _resolve(None, None, model, None, None, sets, None, None, False, adapter, training=False)
    run_cfg.model.gradient_checkpointing = False
    adapter_obj = load_model(run_cfg, build_task(run_cfg))
    merged = merge_lora(adapter_obj.model)

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        adapter_obj.tokenizer.save_pretrained(tmp)

    path = atomic_write_dir(Path(out), write)
    console.print(f"merged checkpoint: {path}")


@cli.command(name="lm-eval", add_help_option=False,
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_passthrough(args):
    """lm-eval's own command line with --model dllm-rl available; every argument passes to lm-eval unchanged."""
    from .lm_eval_cli import run as run_lm_eval_cli

    run_lm_eval_cli(list(args))


def _print_table(header: list[str], rows: list[list[str]], fmt: str, title: str, caption: str) -> None:
    """One table as rich (``table``), Markdown or CSV on stdout; Δ rows in bold."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *rows])
        click.echo(buf.getvalue(), nl=False)
    elif fmt == "markdown":
        click.echo(f"{caption}\n")
        click.echo("| " + " | ".join(header) + " |")
        click.echo("|" + "---|" * len(header))
        for row in rows:
            click.echo("| " + " | ".join(row) + " |")
    else:
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:  # escaped: a variant label such as [lr1e-5] is text, not rich markup
            table.add_row(*(escape(str(c)) for c in row), style="bold" if row[1].startswith("Δ") else None)
        console.print(table)


@cli.command()
@click.argument("results_dir", type=click.Path(), default="runs/results")
@click.option("--study", "studies", multiple=True, metavar="NAME",
              help="Only this study (subfolder of RESULTS_DIR, e.g. sudoku-espo); repeatable.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              help="table / markdown: one leaderboard per study; csv / json: tidy records (values as fractions).")
@click.option("--error", type=click.Choice(["std", "sem"]), default="std", show_default=True,
              help="Error bar over seeds: sample standard deviation or standard error of the mean.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Also write training-curve PNGs (one per task) into this folder.")
@click.option("--plot-metric", "plot_metrics", multiple=True, default=("reward",), show_default=True,
              help="Training-curve field to plot (repeatable), e.g. reward, kl, grad_norm, clip_frac, rollout_nfe, "
                   "or val_accuracy (the validation metric recorded every eval.every steps).")
@click.option("--smooth", type=int, default=1, show_default=True,
              help="Trailing moving average over this many logged points of each curve (steps, or evaluations for val_*).")
@click.option("--log-scale", is_flag=True, help="Plot the curves' y axis on a log scale (e.g. kl, whose spikes flatten the rest).")
@click.option("--costs", "show_costs", is_flag=True,
              help="Also print what each run spent: steps, training minutes, s/step, rollout NFE, final reward.")
@click.option("--budget-seconds", type=float, default=None,
              help="Also compare at equal wall-clock: each run's last validation score within this many seconds of training.")
def compare(results_dir, studies, fmt, error, plots_dir, plot_metrics, smooth, log_scale, show_costs, budget_seconds):
    """Leaderboards of the results files in RESULTS_DIR (default: runs/results, your own runs): one
    table per study (subfolder), rows model + algorithm (+ variant label) with seeds averaged, mean ±
    std (or sem) with n seeds, a base row and a delta row against it."""
    import json

    from .results import by_study, leaderboard, load_results, mixed_bases, skipped_lines, tidy

    if budget_seconds is not None and budget_seconds <= 0:  # options first: bad input costs no reading
        raise UsageError(f"--budget-seconds: the wall-clock budget must be positive, got {budget_seconds:g} s")
    if smooth < 1:
        raise UsageError(f"--smooth must be at least 1, got {smooth}")
    if fmt in ("csv", "json") and (show_costs or budget_seconds is not None):
        raise UsageError(f"--costs and --budget-seconds print tables of their own; use them with --format table or "
                         f"markdown (--format {fmt} prints the leaderboard's records only)")
    from pathlib import Path

    skipped: list = []
    results = load_results(results_dir, skipped)
    groups = by_study(results)
    if studies:
        unknown = [s for s in studies if s not in groups]
        if unknown:
            raise UsageError(f"no study {unknown[0]!r} in {results_dir}; studies: {', '.join(g or '(top level)' for g in groups) or 'none'}")
        groups = {s: groups[s] for s in studies}
        results = [r for r in results if r["_experiment"] in groups]
        skipped = [(p, why) for p, why in skipped if p.parent.relative_to(results_dir).as_posix().strip(".") in groups]
    for line in skipped_lines(skipped):
        click.echo(f"warning: {line}", err=True)
    if not results:
        raise UsageError(f"no results files found in {results_dir!r} (expected *.json written by `dllm-rl run`)")
    if fmt in ("csv", "json"):
        records = [rec for study, rs in groups.items() for rec in tidy(rs, error, study)]
        if fmt == "json":
            click.echo(json.dumps(records, indent=1))
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=["study", "model", "algorithm", "task", "length", "metric", "row",
                                                     "mean", error, "n"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
            click.echo(buf.getvalue(), nl=False)
    else:
        for i, (study, rs) in enumerate(groups.items()):
            where = str(Path(results_dir) / study) if study else results_dir
            if fmt == "markdown" and i:
                click.echo("")
            _print_table(*leaderboard(rs, error=error), fmt, f"{where}: accuracy in %, mean ± {error} over n seeds",
                         f"{where}: accuracy in %, mean ± {error} over n seeds.")
    if show_costs:
        from .results import cost_problem, costs

        for r in results:
            why = cost_problem(r) if r.get("training") else None
            if why:
                click.echo(f"warning: --costs skipped {r['_path']!r}: {why}", err=True)

        if fmt == "markdown":
            click.echo("")
        _print_table(*costs(results, error=error), fmt,
                     f"training cost ({results_dir}); mean ± {error} over n seeds", f"Training cost, mean ± {error} over n seeds.")
    if budget_seconds is not None:
        from .results import at_budget

        if fmt == "markdown":
            click.echo("")
        _print_table(*at_budget(results, budget_seconds, error=error), fmt,
                     f"equal wall-clock ({results_dir}); validation in %, mean ± {error} over n seeds",
                     f"Validation at equal wall-clock, in %, mean ± {error} over n seeds.")
    if plots_dir:
        from .plots import plot_curves

        written = [p for key in plot_metrics for p in plot_curves(results, plots_dir, key, smooth, error, log_scale)]
        if not written:
            raise UsageError(f"no training curves with {', '.join(plot_metrics)} in {results_dir} (runs with training record them)")
        for path in written:
            err_console.print(f"plot: {path}")
    for study, rs in groups.items():  # after the tables: a bad option above still fails with one line
        for line in mixed_bases(rs):
            click.echo(f"warning: {f'{study}: ' if study else ''}{line}", err=True)


@cli.command()
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False), default=None,
              help="YAML grid (algorithms, tasks, seeds, model, recipe, set, variants, out, run_dir); options below extend it.")
@click.option("--algo", "--algorithm", "algos", multiple=True, help="Algorithm(s), repeatable or comma-separated.")
@click.option("--task", "tasks", multiple=True, help="Task(s), repeatable or comma-separated.")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (default: the grid's, else 0).")
@click.option("--model", default=None, help="Model family or alias. Default: tiny.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None, help="YAML recipe applied to every run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Setting for every run (repeatable).")
@click.option("--variant", "variants", multiple=True, metavar="LABEL:KEY=VALUE",
              help="Run every algorithm/task/seed once per labelled variant (instead of once plainly); repeat a label "
                   "to give it several settings, e.g. k1:algorithm.kl=k1; 'LABEL:' alone adds no setting.")
@click.option("--out", default=None, help="Results folder (default: the grid's, else results/).")
@click.option("--run-dir", default=None, help="Where checkpoints and metrics go. Default: runs/.")
@click.option("--workers", type=int, default=1, show_default=True, help="Runs in parallel (worker processes).")
@click.option("--force", is_flag=True, help="Rerun runs whose results already exist (also ones with another configuration).")
@click.option("--dry-run", is_flag=True, help="Only list the runs and whether each is done.")
def sweep(grid_file, algos, tasks, seeds, model, recipe, sets, variants, out, run_dir, workers, force, dry_run):
    """Run a grid of algorithms x tasks x seeds (x variants), one results file each, skipping the ones
    already done; `dllm-rl compare OUT` then averages the seeds."""
    import time

    from .sweep import Grid, execute, load_grid, plan, record

    started = time.time()
    grid = load_grid(grid_file) if grid_file else Grid()
    split = lambda values: [v.strip() for value in values for v in value.split(",") if v.strip()]
    if algos:
        grid.algorithms = {a: grid.algorithms.get(a, []) for a in split(algos)}
    if tasks:
        grid.tasks = split(tasks)
    if seeds:
        try:
            grid.seeds = [int(s) for s in split([seeds])]
        except ValueError:
            raise UsageError(f"bad --seeds {seeds!r}: expected comma-separated integers such as 0,1,2") from None
    grid.model, grid.recipe = model or grid.model, recipe or grid.recipe
    grid.sets = [*grid.sets, *sets]
    for v in variants:
        label, sep, setting = v.partition(":")
        if not sep or (setting.strip() and "=" not in setting):
            raise UsageError(f"bad --variant {v!r}: expected LABEL:KEY=VALUE, e.g. k1:algorithm.kl=k1")
        grid.variants.setdefault(label.strip(), []).extend([setting.strip()] if setting.strip() else [])
    grid.out, grid.run_dir = out or grid.out, run_dir or grid.run_dir
    jobs = plan(grid, force=force)
    if dry_run:
        for i, j in enumerate(jobs):
            console.print(f"[{i + 1}/{len(jobs)}] {j.name}: {j.status}{f' ({j.detail})' if j.detail else ''} -> {j.path}",
                          markup=False, highlight=False)
        return
    _quiet_libraries()
    counts = execute(jobs, workers, log=lambda line: console.print(line, markup=False, highlight=False))
    record(grid.out, grid, jobs, counts, started)
    console.print(f"sweep: {counts['ran']} ran, {counts['skipped']} skipped (done), {counts['failed']} failed; "
                  f"results in {grid.out} (`dllm-rl compare {grid.out}`)")
    if counts["failed"]:
        sys.exit(1)


@cli.command(name="list")
def list_plugins():
    """Algorithms, tasks and models, with where each comes from; a warning line per name defined twice."""
    from . import registry

    conflicts = []
    for kind in registry.KINDS:
        table = Table(title=kind)
        table.add_column("name")
        table.add_column("source")
        table.add_column("target")
        table.add_column("description")
        for name, e in sorted(registry.entries(kind).items()):
            table.add_row(name, e.source, e.target, registry.describe(e))
            conflicts += [e.conflict()] if e.conflict() else []
        console.print(table)
    for message in conflicts:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@cli.group(name="config")
def config_group():
    """The resolved configuration of a run."""


@config_group.command(name="show")
@run_options
def config_show(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code, resume):
    """Print the configuration `dllm-rl run` would use with these options, as YAML (reusable with --recipe):
    defaults < presets < recipe < names and seed < --set, every value checked."""
    import yaml

    from .config import to_dict

    run_cfg = _resolve(algo, task, model, seed, recipe, sets, results_dir, run_dir, trust_remote_code)
    click.echo(yaml.safe_dump(to_dict(run_cfg), sort_keys=False), nl=False)


@cli.command()
@click.option("--task", default=None, help="Task whose train split the tiny model learns. Default: sudoku.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="e.g. pretrain.steps=2000")
def pretrain(task, recipe, sets):
    """Build (or find cached) the tiny model's base checkpoint for a task."""
    from .models.tiny_family import base_checkpoint
    from .pipeline import build_task, gen_length_of

    _quiet_libraries()
    run_cfg = _resolve(None, task, "tiny", None, recipe, sets, None, None)
    task_obj = build_task(run_cfg)
    with _progress() as progress:
        path = base_checkpoint(run_cfg, task_obj, gen_length_of(run_cfg, task_obj, "direct"), progress)
    console.print(f"tiny base checkpoint: {path}")


def _fail(message: str) -> None:
    """One line on stderr and exit code 2; under a launcher (``accelerate launch``) one line in all."""
    from .distributed import exit_launched, launched

    report = lambda: err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    if launched():  # not one line per process followed by the launcher's own traceback
        exit_launched(2, report)
    report()
    sys.exit(2)


def main(argv=None):
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="dllm-rl", standalone_mode=False)
    except UsageError as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        _fail(exc.format_message())


if __name__ == "__main__":
    main()

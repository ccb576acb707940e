"""Sharding work across accelerate processes so that results do not depend on the process count.

Rollouts: process r of P takes prompts r, r+P, ... of the global rollout batch, with all G completions
of each prompt (group-relative advantages need the whole group). Rows keep their global indices, so
keyed sampler noise and ELBO masks are the same whatever P is. Evaluation: process r scores examples
r, r+P, ... and the per-process means are combined, weighted by their example counts."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UsageError
from .atomic import atomic_write_dir
from .task import Example, Task


def my_prompts(num_prompts: int, rank: int, world: int) -> list[int]:
    """Global prompt positions of process ``rank`` in a rollout batch of ``num_prompts`` prompts."""
    if num_prompts % world:
        raise UsageError(f"rollout.num_prompts ({num_prompts}) must be a multiple of the number of processes ({world}): "
                         "each process takes the same number of whole prompt groups")
    return list(range(rank, num_prompts, world))


class TaskShard:
    """A task whose ``split`` holds only one process's examples; everything else is the task's."""

    def __init__(self, task: Task, split: str, examples: list[Example]):
        self._task, self._split, self._examples = task, split, examples

    def examples(self, split: str) -> list[Example]:
        return list(self._examples) if split == self._split else self._task.examples(split)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def shard_batch_size(num_examples: int, world: int, batch_size: int, mine: int) -> int:
    """A per-process batch size giving every process the same number of generation batches (models
    with sharded weights, FSDP or ZeRO-3, need every process to run the same number of forwards)."""
    batches = max(1, math.ceil(math.ceil(num_examples / world) / batch_size))
    return max(1, math.ceil(mine / batches))


def combine_eval(parts: list[dict[str, dict[str, float]]], primary: str) -> dict[str, dict[str, float]]:
    """Per-length metrics of the whole split from each process's metrics on its shard: means weighted
    by example counts, counts summed, the primary metric's standard error recomputed on the union
    (same binomial formula as ``evaluation.evaluate``), NFE and seconds the slowest process's."""
    out: dict[str, dict[str, float]] = {}
    for length in parts[0]:
        rows = [p[length] for p in parts]
        n = sum(r["n"] for r in rows)
        row: dict[str, float] = {}
        for key in rows[0]:
            if key in ("n", "nfe", "seconds") or key.endswith("_stderr"):
                continue
            row[key] = sum(r[key] * r["n"] for r in rows) / n
        p = row[primary]
        row[f"{primary}_stderr"] = math.sqrt(max(p * (1 - p), 0.0) / n) if 0 <= p <= 1 else 0.0
        row["n"] = n
        row["nfe"] = max(r["nfe"] for r in rows)
        row["seconds"] = max(r["seconds"] for r in rows)
        out[length] = row
    return out


def reduce_metrics(accelerator, sums: dict[str, float], maxes: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Sum ``sums`` and take the max of ``maxes`` over processes (same keys on every process)."""
    if accelerator.num_processes == 1:
        return sums, maxes
    keys = sorted(sums)
    total = accelerator.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device), "sum")
    out_sums = {k: float(v) for k, v in zip(keys, total.cpu())}
    out_maxes = {}
    if maxes:
        mkeys = sorted(maxes)
        gathered = accelerator.gather(torch.tensor([maxes[k] for k in mkeys], dtype=torch.float64, device=accelerator.device))
        top = gathered.view(accelerator.num_processes, len(mkeys)).max(0).values.cpu()
        out_maxes = {k: float(v) for k, v in zip(mkeys, top)}
    return out_sums, out_maxes


def gather_rows(accelerator, rows: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``values`` [n, ...] of every process, in global row order (every process gets the result)."""
    if accelerator.num_processes == 1:
        return values
    all_rows = accelerator.gather(rows.to(accelerator.device)).cpu()
    order = torch.argsort(all_rows)
    return tuple(accelerator.gather(v.to(accelerator.device)).cpu()[order] for v in values)


def gather_objects(accelerator, items: list) -> list:
    """Concatenation of every process's ``items`` (in process order)."""
    if accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def sum_int(accelerator, value: int) -> int:
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.reduce(torch.tensor([value], dtype=torch.long, device=accelerator.device), "sum").item())


def broadcast_from_main(accelerator, value: Any) -> Any:
    """The main process's ``value`` on every process (a picklable object)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def collective_write_dir(accelerator, path: Path, fill: Callable[[Path], None]) -> Path:
    """``atomic.atomic_write_dir`` for a folder every process writes into (accelerate's checkpoint
    shards, per-process RNG states): the main process creates the temporary folder and renames it
    once all processes have returned from ``fill(tmp)``."""
    if accelerator.num_processes == 1:
        return atomic_write_dir(path, fill)
    from accelerate.utils import broadcast_object_list

    if accelerator.is_main_process:
        def write(tmp: Path) -> None:
            broadcast_object_list([str(tmp)])
            fill(tmp)
            accelerator.wait_for_everyone()

        atomic_write_dir(path, write)
    else:
        tmp = broadcast_object_list([None])[0]
        fill(Path(tmp))
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()  # the rename is done before anyone reads the folder
    return path


def configure_deepspeed(accelerator, micro_batch_size: int, num_micro: int, grad_clip: float) -> None:
    """Under DeepSpeed, our loop decides batch sizes, accumulation and clipping, not the DS config:
    write ours into it (DeepSpeed checks train_batch = micro x accumulation x processes)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = num_micro
    ds["train_batch_size"] = micro_batch_size * num_micro * accelerator.num_processes
    ds["gradient_clipping"] = grad_clip
    accelerator.gradient_accumulation_steps = num_micro


def launcher_pid() -> int | None:
    """The pid of the ``accelerate launch`` / ``torchrun`` process that started this one (its parent,
    with the launchers' environment markers set), or None."""
    import os

    if not ("TORCHELASTIC_RUN_ID" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ):
        return None
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
    except OSError:
        return None
    names = [os.path.basename(a) for a in argv]
    accelerate = any(n == "accelerate" and "launch" in argv[i + 1:i + 2] for i, n in enumerate(names))
    torchrun = "torchrun" in names or "torch.distributed.run" in argv
    return ppid if accelerate or torchrun else None


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    import os

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def exit_launched(code: int, report) -> None:
    """End a launched process after bad input so that the user sees one line. The first process of
    this launcher to get here (a lock file keyed by the launcher) prints it with ``report()`` and ends
    its sibling processes and the launcher at once (a launcher that sees a worker exit non-zero
    prints its own ~40-line traceback, burying the line; siblings left waiting at a collective would
    hang); the others wait to be ended. The launcher's exit status is then non-zero (killed)."""
    import os
    import signal
    import sys
    import tempfile
    import time

    launcher = launcher_pid()
    lock = Path(tempfile.gettempdir()) / f"dllm-rl-error-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}-{launcher or os.getppid()}"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > 120:  # a stale lock of an earlier launcher
            lock.unlink(missing_ok=True)
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        first = True
    except FileExistsError:
        first = False
    except OSError:
        first = int(os.environ.get("RANK", 0)) == 0
    if first:
        report()
        sys.stderr.flush()
        sys.stdout.flush()
        if launcher is not None:
            siblings = [pid for pid in _children(launcher) if pid != os.getpid()]
            for pid in [launcher, *siblings]:  # the launcher first: it cannot react to a sibling's end
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        lock.unlink(missing_ok=True)
    elif launcher is not None:
        time.sleep(30)  # the first process ends this one; a fallback exit if it cannot
    os._exit(code)


def launched() -> bool:
    """Whether a launcher started this process: torchrun's / accelerate's elastic environment (set
    for every rank, even after local rank 0 ended the launcher), or accelerate's one-process launcher
    as the parent."""
    import os

    return "TORCHELASTIC_RUN_ID" in os.environ or launcher_pid() is not None


def checked_on_main(state, check: Callable[[], Any]) -> None:
    """Run ``check`` (a check or a write) on the main process only, and raise its UsageError on every
    process, so that no process waits at a barrier for one that stopped with bad input (any other
    exception still ends only the main process; the launcher then ends the others)."""
    problem = None
    if state.is_main_process:
        try:
            check()
        except UsageError as exc:
            problem = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem:
        raise UsageError(problem)

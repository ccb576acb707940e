"""Run untrusted programs against trusted tests: one harness process and one locked-down program
process per job, a wall-clock deadline that kills both process groups (and the program's pid
namespace and cgroups), a fresh temporary folder deleted afterwards, limits on the memory, processes
and disk of the whole job, and a bounded worker pool.

A job passes a test only if the harness process itself reported the test as passed, in a message
carrying the job's random nonce, through a pipe the program process never holds; exit codes and
printed output count for nothing. Model output is never executed in the calling process."""
from __future__ import annotations

import hmac
import os
import secrets
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _wire
from .isolation import Isolation, probe, read_paths

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "_harness.py"
UNTRUSTED = HERE / "_untrusted.py"
MAX_RESULT_BYTES = 64 << 20
GRACE_SECONDS = 5.0
DISK_POLL_SECONDS = 0.02
ALLOW_ROOT_ENV = "DLLM_RL_SANDBOX_ALLOW_ROOT"


class WeakIsolation(RuntimeError):
    """The host cannot contain untrusted programs well enough for the requested strictness."""


class RootRefused(RuntimeError):
    """Programs would run as uid 0 of the host and the caller did not allow it."""


@dataclass
class Limits:
    """Resource limits of one job; defaults suit HumanEval/MBPP-sized programs."""

    timeout: float = 10.0
    """Wall-clock seconds for the whole job (program start, load and all tests)."""
    test_timeout: float = 5.0
    """Wall-clock seconds per test (a test that runs longer fails; the next gets a fresh process)."""
    start_timeout: float = 10.0
    """Seconds the program process may take to start before the job is abandoned."""
    cpu_seconds: int = 10
    memory_mb: int = 1024
    """Address-space limit of each process of the program (RLIMIT_AS)."""
    job_memory_mb: int | None = None
    """Memory of the whole job: all its processes and its tmpfs working folder together (a memory
    cgroup, where one can be made); None: ``memory_mb``."""
    max_processes: int = 32
    """Processes of the whole job (a pids cgroup, else RLIMIT_NPROC)."""
    max_file_mb: int = 16
    """Largest file the program may write, its captured stdout/stderr included (RLIMIT_FSIZE)."""
    max_disk_mb: int = 64
    """Everything the job writes in its working folder together (see ``Isolation.describe()["disk"]``)."""
    max_output_bytes: int = 4096
    """How much of the program's stdout/stderr the verdict keeps."""
    max_restarts: int = 2
    """Fresh program processes after a crash or a timed-out test, so later tests still run."""
    site_packages: bool = True
    """Let programs import installed third-party packages (numpy, ...), as the official harnesses do
    (their folders go on sys.path; ``.pth`` files are not run)."""


@dataclass
class Job:
    """An untrusted program and the trusted code that tests it.

    Every test is a snippet run in the harness; it passes if it raises nothing. Names the program
    defines are visible to the tests as proxies (calls return plain data), except names of builtins.
    ``prelude`` and ``setup`` are trusted code run before the tests (``prelude`` first: e.g. a
    benchmark's prompt, so tests use its helpers rather than the program's copies); ``bind`` maps a
    test name to a program name (``{"candidate": "add"}``); ``data`` is plain data seen as ``_DATA``;
    ``outputs`` are expressions whose values are returned (for trusted reference programs)."""

    program: str
    tests: list[str] = field(default_factory=list)
    prelude: str = ""
    setup: str = ""
    bind: dict[str, str] = field(default_factory=dict)
    data: Any = None
    outputs: list[str] = field(default_factory=list)
    test_timeouts: list[float] | None = None
    """Per-unit budgets (tests, then outputs); None = ``Limits.test_timeout`` each."""
    fail_fast: bool = False
    """Stop at the first failed test (the rest count as failed): enough for pass@1, much faster."""


@dataclass
class Verdict:
    passed: list[bool]
    """Per test: True only if the harness reported it passed, with the right nonce."""
    status: str
    """ok | load_error (program failed to load) | crashed | timeout | disk_limit | harness_error | no_verdict."""
    completed: bool
    """The harness delivered a verdict with the right nonce before the deadline."""
    outputs: list[Any] = field(default_factory=list)
    """Values of ``Job.outputs`` (None where evaluating one failed; see ``output_ok``)."""
    output_ok: list[bool] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)
    error: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_seconds: float = 0.0
    isolation: dict = field(default_factory=dict)
    workdir: str = ""
    """The (deleted) working folder: lets tests check that nothing survived the job."""

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.passed) and all(self.passed)


def _read_capped(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _rmtree(path: Path) -> None:
    """Delete a folder even if the program made parts of it unreadable."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


def _kill_group(pgid: int) -> None:
    if pgid > 1 and pgid != os.getpgrp():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _Cgroup:
    """The cgroups of one job (one folder on cgroup v2, one per controller on v1): cap the processes
    (pids.max) and memory (memory.max without swap; the whole job is OOM-killed together on v2) of
    the job's whole process tree, and find every survivor."""

    def __init__(self, parents: list[str], max_processes: int, memory_bytes: int):
        name = f"dllm-rl-job-{uuid.uuid4().hex}"
        self.paths: list[Path] = []
        limits = [("pids.max", max_processes), ("memory.max", memory_bytes), ("memory.swap.max", 0),
                  ("memory.oom.group", 1), ("memory.limit_in_bytes", memory_bytes),
                  ("memory.memsw.limit_in_bytes", memory_bytes)]  # v1 needs limit_in_bytes before memsw
        try:
            for parent in dict.fromkeys(parents):
                path = Path(parent) / name
                path.mkdir()
                self.paths.append(path)
                for file, value in limits:
                    if (path / file).exists():
                        (path / file).write_text(str(value))
        except OSError:
            self.remove()
            raise

    def _pids(self) -> set[int]:
        pids = set()
        for path in self.paths:
            try:
                pids.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def oom_kills(self) -> int:
        """Processes the kernel killed for exceeding the job's memory (v2 memory.events, v1 memory.oom_control)."""
        kills = 0
        for path in self.paths:
            for file in ("memory.events", "memory.oom_control"):
                try:
                    for line in (path / file).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        kills += int(value) if key == "oom_kill" else 0
                except (OSError, ValueError):
                    pass
        return kills

    def remove(self) -> None:
        self.kill_all()
        for path in self.paths:
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the last processes are still being reaped
                    time.sleep(0.02)


def _disk_usage(folder: Path, limit: int) -> int:
    """Bytes used beneath ``folder`` (stopping once past ``limit``). Each entry counts at least 4 KiB,
    so that a flood of empty files counts too; a folder that stays unreadable counts as over the limit."""
    total, stack = 0, [folder]
    while stack and total <= limit:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        except PermissionError:
            try:
                os.chmod(current, stat.S_IRWXU)
                entries = list(os.scandir(current))
            except OSError:
                return limit + 1
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += max(info.st_blocks * 512, 4096)
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
    return total


class _DiskWatch:
    """Polls a job's working folder and calls ``on_exceed`` once it holds more than ``limit`` bytes.

    The fallback where the folder cannot be a tmpfs of its own, and a check of the folder beneath it
    where it can (then it stays empty). A program can overshoot by what it writes in one poll interval;
    :meth:`stop` checks once more at the end."""

    def __init__(self, folder: Path, limit: int, on_exceed):
        self.folder, self.limit, self.on_exceed = folder, limit, on_exceed
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sandbox-disk", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(DISK_POLL_SECONDS):
            if _disk_usage(self.folder, self.limit) > self.limit:
                self.exceeded = True
                self.on_exceed()
                return

    def stop(self) -> bool:
        """Stop watching; whether the job exceeded its limit at any time."""
        self._stop.set()
        self._thread.join()
        self.exceeded = self.exceeded or _disk_usage(self.folder, self.limit) > self.limit
        return self.exceeded


def _mount_namespace() -> str | None:
    """This process's mount namespace: the program mounts its tmpfs only in a different one."""
    try:
        return os.readlink("/proc/self/ns/mnt")
    except OSError:
        return None


def _env(home: str) -> dict[str, str]:
    """The whole environment of the child processes: nothing inherited (no tokens, no proxies)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _python() -> list[str]:
    """Interpreter flags: no site processing (``.pth`` hooks cost ~0.3 s per start), no bytecode files,
    no script folder on sys.path (3.11+). Not -I/-E: the environment is already fully ours, and it
    fixes PYTHONHASHSEED so that set and dict orders, hence verdicts, are reproducible."""
    flags = [sys.executable, "-s", "-S", "-B"]
    if sys.version_info >= (3, 11):
        flags.append("-P")
    return flags


class _Harness:
    """One trusted harness server process, reused for many jobs (one at a time)."""

    def __init__(self, harden: bool):
        r, w = os.pipe()
        self.err = tempfile.TemporaryFile()  # its tracebacks, if it ever fails
        try:
            self.proc = subprocess.Popen([*_python(), str(HARNESS), str(w), "1" if harden else "0"], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=self.err, cwd="/", env=_env("/"),
                                         pass_fds=(w,), start_new_session=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.results = r
        self.pgids: list[int] = []

    def submit(self, spec: dict) -> None:
        _wire.send(self.proc.stdin.fileno(), spec)

    def verdict(self, nonce: str, deadline: float) -> dict | None:
        """The job's final message if it carries ``nonce`` and arrives before ``deadline``, else None."""
        while True:
            try:
                msg = _wire.recv(self.results, MAX_RESULT_BYTES, deadline)
            except _wire.WireError:
                return None
            if isinstance(msg, dict) and len(msg) == 1 and isinstance(msg.get("pgid"), int):
                self.pgids.append(msg["pgid"])
            elif isinstance(msg, dict) and "nonce" in msg:
                return msg if hmac.compare_digest(str(msg["nonce"]), nonce) else None
            else:
                return None

    def kill_programs(self) -> None:
        for pgid in self.pgids:
            _kill_group(pgid)
        self.pgids.clear()

    def stderr(self, limit: int) -> str:
        self.err.seek(0, os.SEEK_END)
        self.err.seek(max(0, self.err.tell() - limit))
        return self.err.read().decode("utf-8", errors="replace")

    def close(self) -> None:
        self.kill_programs()
        _kill_group(self.proc.pid)
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.err.close()
        os.close(self.results)


class Sandbox:
    """Runs :class:`Job` s in isolated processes, several at a time.

    Each job gets a fresh program process (and namespace, cgroup and working folder); the trusted
    harness processes are reused between jobs to save interpreter start-ups. Call :meth:`close`
    (or use the sandbox as a context manager) to stop them; they also exit when this process does."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, isolation: Isolation | None = None,
                 allow_weak_isolation: bool = False, allow_root: bool = False):
        self.limits = limits or Limits()
        self.workers = max(1, workers or (os.cpu_count() or 2))
        self._isolation = isolation
        self.allow_weak_isolation = allow_weak_isolation
        self.allow_root = allow_root or os.environ.get(ALLOW_ROOT_ENV) == "1"
        self._idle: list[_Harness] = []
        self._lock = threading.Lock()

    @property
    def isolation(self) -> Isolation:
        """The layers in use; raises :class:`WeakIsolation` if programs could signal (kill) other
        processes of this user, unless the sandbox was built with ``allow_weak_isolation=True``, and
        :class:`RootRefused` if they would run as uid 0 of the host, unless ``allow_root=True`` or
        the environment variable ``DLLM_RL_SANDBOX_ALLOW_ROOT=1``."""
        if self._isolation is None:
            self._isolation = probe()
        if not self._isolation.contains_signals and not self.allow_weak_isolation:
            raise WeakIsolation(
                "this host offers neither pid namespaces (unshare), Landlock >= 6 nor seccomp, so untrusted programs could "
                "kill other processes of this user; allow it explicitly (allow_weak_isolation=True) or run in a "
                "container or VM")
        if self._isolation.runs_as_root and not self.allow_root:
            raise RootRefused(
                "untrusted programs would run as uid 0 of the host (no user namespace here, and uid 65534 cannot "
                f"read this Python installation); run as another user, or allow it: {ALLOW_ROOT_ENV}=1 or "
                "Sandbox(allow_root=True)")
        return self._isolation

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for harness in idle:
            harness.close()

    def map(self, jobs: list[Job], limits: list[Limits] | None = None) -> list[Verdict]:
        """Verdicts in job order, at most ``workers`` jobs at a time (``limits``: one per job, optional)."""
        per_job = limits if limits is not None else [self.limits] * len(jobs)
        if len(per_job) != len(jobs):
            raise ValueError("need one Limits per job")
        if len(jobs) <= 1 or self.workers == 1:
            return [self.run(job, lim) for job, lim in zip(jobs, per_job)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)), thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, jobs, per_job))

    def _acquire(self) -> _Harness:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        iso = self.isolation
        return _Harness(harden=not (iso.pid_namespace and iso.landlock_abi >= 1))

    def _release(self, harness: _Harness) -> None:
        with self._lock:
            if len(self._idle) < self.workers:
                self._idle.append(harness)
                return
        harness.close()

    def run(self, job: Job, limits: Limits | None = None) -> Verdict:
        """One job's verdict (``limits`` default to the sandbox's)."""
        lim, iso = limits or self.limits, self.isolation
        start = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="dllm-rl-sandbox-"))
        work, io = root / "work", root / "io"
        work.mkdir()
        io.mkdir()
        if iso.uid is not None:  # its own folder, reachable by path (Landlock, $HOME) but not listable around it
            os.chown(work, iso.uid, iso.uid)
            root.chmod(0o711)
        memory_mb = lim.job_memory_mb or lim.memory_mb
        parents = [p for p in (iso.pids_cgroup, iso.memory_cgroup) if p]
        try:
            cgroup = _Cgroup(parents, lim.max_processes, memory_mb << 20) if parents else None
        except OSError as exc:  # never run a job without the limits the host promised
            verdict = self._verdict(job, None, io, lim)
            verdict.status, verdict.error = "harness_error", f"cannot create the job's cgroup: {exc}"
            verdict.workdir = str(work)
            _rmtree(root)
            return verdict
        nonce = secrets.token_hex(16)
        spec = {
            "nonce": nonce, "program": job.program, "tests": list(job.tests), "prelude": job.prelude,
            "setup": job.setup, "bind": dict(job.bind), "data": _wire.encode(job.data), "outputs": list(job.outputs),
            "test_timeouts": job.test_timeouts, "fail_fast": job.fail_fast, "timeout": lim.timeout,
            "test_timeout": lim.test_timeout,
            "start_timeout": lim.start_timeout, "max_restarts": lim.max_restarts,
            "wrapper": list(iso.wrapper), "python": _python(), "untrusted_script": str(UNTRUSTED),
            "env": _env(str(work)), "stdout_path": str(io / "program.out"), "stderr_path": str(io / "program.err"),
            "untrusted": {"workdir": str(work), "memory_mb": lim.memory_mb, "cpu_seconds": lim.cpu_seconds,
                          "max_processes": lim.max_processes, "max_file_mb": lim.max_file_mb,
                          "landlock": iso.landlock_abi >= 1, "read_paths": read_paths(iso.pid_namespace),
                          "seccomp": iso.seccomp, "uid": iso.uid,
                          "cgroups": [str(p) for p in cgroup.paths] if cgroup else [],
                          # a uid shared by concurrent jobs would share RLIMIT_NPROC too: the pids cgroup counts instead
                          "rlimit_nproc": iso.uid is None or not iso.pids_cgroup,
                          "tmpfs": lim.max_disk_mb if iso.mount_namespace else 0, "caller_mount_ns": _mount_namespace(),
                          "sys_path": site.getsitepackages() if lim.site_packages else []},
        }
        harness = self._acquire()

        def stop_job():  # from the disk watch: end the job now, its harness included
            for pgid in [harness.proc.pid, *harness.pgids]:
                _kill_group(pgid)
            if cgroup:
                cgroup.kill_all()

        watch = _DiskWatch(work, lim.max_disk_mb << 20, stop_job)
        result, failure, oom_kills = None, "", 0
        try:
            harness.submit(spec)
            result = harness.verdict(nonce, start + lim.timeout + lim.start_timeout + GRACE_SECONDS)
        except _wire.WireError:
            result = None
        finally:
            over_disk = watch.stop()
            harness.kill_programs()
            if cgroup:
                oom_kills = cgroup.oom_kills()
                cgroup.remove()
            if result is None or over_disk:  # late, dead or confused: never reuse it
                failure = "" if over_disk else harness.stderr(lim.max_output_bytes).strip()
                harness.close()
            else:
                self._release(harness)
        verdict = self._verdict(job, None if over_disk else result, io, lim)
        if over_disk:
            verdict.status, verdict.error = "disk_limit", f"the job wrote more than {lim.max_disk_mb} MB"
        if oom_kills:
            verdict.error = "; ".join(filter(None, [verdict.error, f"the job exceeded its {memory_mb} MB of memory "
                                                                   f"(the kernel killed {oom_kills} of its processes)"]))
        if failure:
            verdict.error = f"{verdict.error}; harness: {failure}"
        verdict.wall_seconds = round(time.monotonic() - start, 4)
        verdict.workdir = str(work)
        _rmtree(root)
        return verdict

    @staticmethod
    def _verdict(job: Job, result: dict | None, io: Path, lim: Limits) -> Verdict:
        out = _read_capped(io / "program.out", lim.max_output_bytes)
        err = _read_capped(io / "program.err", lim.max_output_bytes)
        n = len(job.tests)
        if result is None:
            return Verdict(passed=[False] * n, status="no_verdict", completed=False, outputs=[None] * len(job.outputs),
                           output_ok=[False] * len(job.outputs), error="the harness gave no verdict before the deadline",
                           stdout=out, stderr=err)
        passed = result.get("passed")
        if not isinstance(passed, list) or len(passed) != n or not all(isinstance(p, bool) for p in passed):
            return Verdict(passed=[False] * n, status="harness_error", completed=False, error="malformed verdict",
                           stdout=out, stderr=err)
        raw = result.get("outputs") or [None] * len(job.outputs)
        outputs = [None if o is None else _wire.decode(o["v"]) for o in raw]
        return Verdict(passed=passed, status=str(result.get("status")), completed=True, outputs=outputs,
                       output_ok=[o is not None for o in raw],
                       seconds=list(result.get("seconds") or []), error=str(result.get("error") or ""),
                       stdout=out, stderr=err, isolation=result.get("isolation") or {})

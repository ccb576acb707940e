"""Run untrusted programs against trusted tests: one harness process and one locked-down program
process per job, a wall-clock deadline that kills both process groups (and the program's pid
namespace and cgroup), a fresh temporary folder deleted afterwards, and a bounded worker pool.

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
from .isolation import Isolation, probe

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "_harness.py"
UNTRUSTED = HERE / "_untrusted.py"
MAX_RESULT_BYTES = 64 << 20
GRACE_SECONDS = 5.0


class WeakIsolation(RuntimeError):
    """The host cannot contain untrusted programs well enough for the requested strictness."""


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
    """Address-space limit of the program process (RLIMIT_AS)."""
    max_processes: int = 32
    max_file_mb: int = 16
    """Largest file the program may write, its captured stdout/stderr included (RLIMIT_FSIZE)."""
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
    """ok | load_error (program failed to load) | crashed | timeout | harness_error | no_verdict."""
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
    """A pids cgroup for one job: caps the number of processes and finds every survivor."""

    def __init__(self, root: str, max_processes: int):
        self.path = Path(root) / f"job-{uuid.uuid4().hex}"
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_processes))

    def kill_all(self) -> None:
        for _ in range(50):
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # the last processes are still being reaped
                time.sleep(0.02)


def _read_paths(own_proc: bool) -> list[str]:
    """Folders the program may read beneath: the Python installation and system libraries, and
    /proc when it is the program's own (a pid namespace); never $HOME, /tmp or the project."""
    paths = {"/proc"} if own_proc else set()
    paths |= {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime",
             "/dev/urandom", "/dev/random", "/dev/zero", sys.prefix, sys.base_prefix, sys.exec_prefix,
             sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if p and os.path.exists(p))


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
                 allow_weak_isolation: bool = False):
        self.limits = limits or Limits()
        self.workers = max(1, workers or (os.cpu_count() or 2))
        self._isolation = isolation
        self.allow_weak_isolation = allow_weak_isolation
        self._idle: list[_Harness] = []
        self._lock = threading.Lock()

    @property
    def isolation(self) -> Isolation:
        """The layers in use; raises :class:`WeakIsolation` if programs could signal (kill) other
        processes of this user, unless the sandbox was built with ``allow_weak_isolation=True``."""
        if self._isolation is None:
            self._isolation = probe()
        if not self._isolation.contains_signals and not self.allow_weak_isolation:
            raise WeakIsolation(
                "this host offers neither pid namespaces (unshare), Landlock >= 6 nor seccomp, so untrusted programs could "
                "kill other processes of this user; allow it explicitly (allow_weak_isolation=True) or run in a "
                "container or VM")
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
        cgroup = None
        if iso.cgroup_root:
            try:
                cgroup = _Cgroup(iso.cgroup_root, lim.max_processes)
            except OSError:
                cgroup = None
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
                          "landlock": iso.landlock_abi >= 1, "read_paths": _read_paths(iso.pid_namespace),
                          "seccomp": iso.seccomp,
                          "cgroup": str(cgroup.path) if cgroup else None,
                          "sys_path": site.getsitepackages() if lim.site_packages else []},
        }
        harness = self._acquire()
        result, failure = None, ""
        try:
            harness.submit(spec)
            result = harness.verdict(nonce, start + lim.timeout + lim.start_timeout + GRACE_SECONDS)
        except _wire.WireError:
            result = None
        finally:
            harness.kill_programs()
            if cgroup:
                cgroup.remove()
            if result is None:  # late, dead or confused: never reuse it
                failure = harness.stderr(lim.max_output_bytes).strip()
                harness.close()
            else:
                self._release(harness)
        verdict = self._verdict(job, result, io, lim)
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

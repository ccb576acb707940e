"""The trusted test harness: runs a job's tests against a program living in another process.

Run by the parent as ``python _harness.py RESULT_FD HARDEN``; reads jobs (frames) from stdin and
serves them one after the other, starting a fresh program process for each. The program
runs in a separate, locked-down process (``_untrusted.py``); every name the tests use from it is a
proxy whose calls return plain data rebuilt here, so assertions, comparisons and builtins are
always this process's own. Only this process knows the job's nonce; it writes the verdict with the
nonce to RESULT_FD (a pipe the program process never inherits) after all tests ran."""
import builtins
import importlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire  # noqa: E402

PR_SET_DUMPABLE = 4
MAX_REPLY = 64 << 20  # one reply (a call's value); larger ones fault the program
MAX_JOB = 1 << 30
# Tests may use a module under the name the program imported it as (MBPP's tests call math.isclose
# after the solution's "import math", as the official harness runs both in one namespace). Only these,
# imported by this process at start-up from this fixed list: a program merely picks one by name, so
# nothing it names (an arbitrary module, a __main__ that runs at import) is ever imported here.
SHARED_MODULES = ("array", "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions", "functools",
                  "heapq", "itertools", "json", "math", "operator", "random", "re", "statistics", "string", "typing")


class ProgramFault(BaseException):
    """The program process died, hung past the deadline, or broke the protocol (not an Exception,
    so a test's ``except Exception`` cannot swallow it)."""


class ProgramExit(BaseException):
    """The program raised SystemExit/KeyboardInterrupt or another non-Exception in a call."""


class TestTimeout(BaseException):
    """The current test ran past its time budget."""


class RemoteError(Exception):
    """An exception of a type defined by the program (or not a builtin)."""


def _on_alarm(signum, frame):
    raise TestTimeout()


class Program:
    """The program process: spawn, load, calls, kill. All replies are decoded into local objects."""

    def __init__(self, job: dict, result_fd: int):
        self.job, self.result_fd = job, result_fd
        self.pid = None
        self.rfd = self.wfd = None
        self.deadline = None  # per-call deadline (the current test's)
        self.faulted = False
        self.report = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> dict:
        """Spawn the process and load the program; returns the program's globals or raises."""
        job = self.job
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        cfg = dict(job["untrusted"], max_frame=MAX_REPLY)
        cmd = [*job["wrapper"], *job["python"], job["untrusted_script"], str(req_r), str(rep_w), json.dumps(cfg)]
        for fd in (req_r, rep_w):
            os.set_inheritable(fd, True)
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:  # posix_spawn, not subprocess: importing subprocess costs more than the whole spawn
            self.pid = os.posix_spawn(cmd[0], cmd, job["env"], setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, job["stdout_path"], append, 0o600),
                (os.POSIX_SPAWN_OPEN, 2, job["stderr_path"], append, 0o600)])
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.wfd, self.rfd = req_w, rep_r
        _wire.send(self.result_fd, {"pgid": self.pid})  # its own session: the parent kills this group on timeout
        self.faulted = False
        ready = self._recv(time.monotonic() + job["start_timeout"])
        if "ready" not in ready:
            raise ProgramFault("program process did not start")
        self.report = ready["ready"]
        reply = self._request({"op": "load", "code": job["program"]})
        return reply["globals"]

    def kill(self) -> None:
        """SIGKILL the program's process group; with a pid namespace, killing its first process
        (via ``unshare --kill-child``) takes every process of the namespace with it."""
        if self.pid is not None:
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            os.waitpid(self.pid, 0)
            self.pid = None
        for fd in (self.rfd, self.wfd):
            if fd is not None:
                os.close(fd)
        self.rfd = self.wfd = None

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self.faulted

    # -- protocol -----------------------------------------------------------------------------
    def _recv(self, deadline):
        try:
            return _wire.recv(self.rfd, MAX_REPLY, deadline)
        except _wire.WireError as exc:
            self.faulted = True
            raise ProgramFault(str(exc)) from None

    def _request(self, msg):
        if not self.alive:
            raise ProgramFault("the program process is gone")
        try:
            _wire.send(self.wfd, msg)
        except _wire.WireError as exc:
            self.faulted = True
            raise ProgramFault(str(exc)) from None
        reply = self._recv(self.deadline)
        if not isinstance(reply, dict):
            self.faulted = True
            raise ProgramFault("malformed reply")
        if "error" in reply:
            err = reply["error"]
            name, message = str(err.get("type")), str(err.get("message"))
            if not err.get("exception"):
                raise ProgramExit(f"{name}: {message}")
            cls = getattr(builtins, name, None) if err.get("builtin") else None
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise RemoteError(f"{name}: {message}")
        return reply

    def encode(self, obj):
        def ref(o):
            if isinstance(o, Remote):
                return o._ref
            return None
        return _wire.encode(obj, ref)

    def decode(self, data):
        def deref(tag, value):
            if tag == "h":
                return Remote(self, {"t": "h", "v": value}, f"object #{value}")
            raise _wire.WireError(f"unexpected reference {tag!r}")
        try:
            return _wire.decode(data, deref)
        except (_wire.WireError, TypeError, ValueError, KeyError) as exc:
            self.faulted = True
            raise ProgramFault(f"malformed value: {exc}") from None

    def call(self, ref, args, kwargs):
        try:
            msg = {"op": "call", "fn": ref, "args": [self.encode(a) for a in args],
                   "kwargs": {str(k): self.encode(v) for k, v in kwargs.items()}}
        except _wire.WireError as exc:
            raise TypeError(f"argument cannot be passed to the program: {exc}") from None
        reply = self._request(msg)
        for key, data in (reply.get("mutated") or {}).items():  # in-place changes to list/dict/set args
            original = args[int(key)] if key.isdigit() else kwargs.get(key)
            _sync(original, self.decode(data))
        return self.decode(reply.get("value"))

    def getattr(self, ref, name):
        return self.decode(self._request({"op": "getattr", "obj": ref, "name": name}).get("value"))

    def dunder(self, ref, name, args=()):
        try:
            enc = [self.encode(a) for a in args]
        except _wire.WireError as exc:
            raise TypeError(f"argument cannot be passed to the program: {exc}") from None
        return self.decode(self._request({"op": "dunder", "obj": ref, "name": name, "args": enc}).get("value"))


def _sync(original, updated) -> None:
    if type(original) is list and type(updated) is list:
        original[:] = updated
    elif type(original) is dict and type(updated) is dict:
        original.clear()
        original.update(updated)
    elif type(original) is set and type(updated) is set:
        original.clear()
        original.update(updated)
    elif type(original) is bytearray and type(updated) is bytearray:
        original[:] = updated


class Remote:
    """A function or object of the program. Calls and attribute reads go to the program process and
    come back as plain data; equality with local data is never delegated to the program."""

    __slots__ = ("_p", "_ref", "_label")

    def __init__(self, program, ref, label):
        object.__setattr__(self, "_p", program)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_label", label)

    def __call__(self, *args, **kwargs):
        return self._p.call(self._ref, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._p.getattr(self._ref, name)

    def __eq__(self, other):
        if isinstance(other, Remote):
            return self._p.dunder(self._ref, "eq", [other])
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = object.__hash__

    def __len__(self):
        return self._p.dunder(self._ref, "len")

    def __iter__(self):
        return iter(self._p.dunder(self._ref, "iter"))

    def __getitem__(self, key):
        return self._p.dunder(self._ref, "getitem", [key])

    def __contains__(self, item):
        return self._p.dunder(self._ref, "contains", [item])

    def __bool__(self):
        return self._p.dunder(self._ref, "bool")

    def __str__(self):
        return self._p.dunder(self._ref, "str")

    def __repr__(self):
        return f"<program {self._label}>"


def _namespace(job: dict, program: Program, kinds: dict, modules: dict) -> dict:
    """The tests' globals: program names as proxies (never shadowing builtins), the program's imports of
    ``SHARED_MODULES`` as this process's own modules, then the trusted prelude, the data and the setup."""
    ns = {"__name__": "__test__", "__builtins__": builtins}
    source = "\n".join([job.get("prelude", ""), job.get("setup", ""), *job["tests"], *job.get("outputs", [])])
    for name, kind in kinds.items():
        if not name.isidentifier() or hasattr(builtins, name):
            continue
        if kind[0] == "callable" or kind[0] == "object":
            ns[name] = Remote(program, {"t": "g", "v": name}, name)
        elif kind[0] == "data":
            ns[name] = program.decode(kind[1])
        elif kind[0] == "module" and name in source and isinstance(kind[1], str) and kind[1] in modules:
            ns[name] = modules[kind[1]]
    if job.get("prelude"):
        exec(compile(job["prelude"], "<prelude>", "exec"), ns)
    ns["_DATA"] = _wire.decode(job.get("data"))
    if job.get("setup"):
        exec(compile(job["setup"], "<setup>", "exec"), ns)
    for local, remote in job.get("bind", {}).items():
        ns[local] = Remote(program, {"t": "g", "v": remote}, remote)
    return ns


def run(job: dict, result_fd: int, modules: dict) -> dict:
    start = time.monotonic()
    end = start + job["timeout"]
    tests, outputs = job["tests"], job.get("outputs", [])
    test_timeouts = job.get("test_timeouts") or [job["test_timeout"]] * (len(tests) + len(outputs))
    passed = [False] * len(tests)
    values, seconds = [None] * len(outputs), [None] * (len(tests) + len(outputs))
    result = {"status": "ok", "passed": passed, "outputs": values, "seconds": seconds, "error": "", "isolation": {}}
    program = Program(job, result_fd)
    program.deadline = min(end, start + job["start_timeout"] + job["test_timeout"])
    try:
        kinds = program.start()
    except (ProgramFault, ProgramExit, Exception) as exc:
        program.kill()
        result.update(status="load_error", error=f"{type(exc).__name__}: {exc}"[:1000], isolation=program.report)
        return result
    result["isolation"] = program.report
    missing = [name for name in job.get("bind", {}).values() if name not in kinds]
    if missing:
        program.kill()
        result.update(status="load_error", error=f"the program does not define {', '.join(missing)}")
        return result
    try:
        ns = _namespace(job, program, kinds, modules)
    except BaseException as exc:
        program.kill()
        result.update(status="harness_error", error=f"{type(exc).__name__}: {exc}"[:1000])
        return result
    restarts = job["max_restarts"]
    units = [(i, compile(t, f"<test {i}>", "exec"), False) for i, t in enumerate(tests)]
    units += [(i, compile(e, f"<output {i}>", "eval"), True) for i, e in enumerate(outputs)]
    signal.signal(signal.SIGALRM, _on_alarm)
    skip_tests = False
    for k, (i, code, is_output) in enumerate(units):
        if skip_tests and not is_output:
            continue
        now = time.monotonic()
        if now >= end:
            result["status"] = "timeout"
            break
        if not program.alive:
            if restarts <= 0:
                result["status"] = "crashed"
                break
            restarts -= 1
            program.kill()
            program.deadline = min(end, now + job["start_timeout"] + job["test_timeout"])
            try:
                program.start()
            except BaseException as exc:
                program.kill()
                result.update(status="crashed", error=f"restart failed: {type(exc).__name__}: {exc}"[:1000])
                break
            now = time.monotonic()
        budget = max(0.001, min(test_timeouts[k], end - now))
        program.deadline = now + budget
        ok, value = False, None
        signal.setitimer(signal.ITIMER_REAL, budget + 0.05)
        try:
            if is_output:
                value = _wire.encode(eval(code, ns))
            else:
                exec(code, ns)
            ok = True
        except TestTimeout:
            program.faulted = True  # it may have been cut off mid-message: start a fresh process
        except BaseException:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.monotonic() - now
        if program.faulted or took > budget:  # a crash or a timeout fails the test, whatever it caught
            ok = False
        seconds[k] = round(took, 6)
        if is_output:
            values[i] = {"v": value} if ok else None
        else:
            passed[i] = ok
            if not ok and job.get("fail_fast"):
                skip_tests = True  # the remaining tests count as failed; outputs are still computed
    program.kill()
    return result


def main() -> None:
    """Serve jobs from stdin until it closes; one verdict frame (with the job's nonce) per job."""
    result_fd = int(sys.argv[1])
    os.set_inheritable(result_fd, False)  # never passed on to the program process
    modules = {name: importlib.import_module(name) for name in SHARED_MODULES}
    if sys.argv[2] == "1":  # no pid namespace or Landlock: at least refuse ptrace and /proc/<pid>/mem
        import ctypes
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    while True:
        try:
            job = _wire.recv(0, MAX_JOB)
        except _wire.PeerGone:
            return
        nonce = job.pop("nonce")
        result = run(job, result_fd, modules)
        _wire.send(result_fd, {"nonce": nonce, **result})


if __name__ == "__main__":
    main()

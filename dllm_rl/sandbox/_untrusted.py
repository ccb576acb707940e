"""The program process: locks itself down, then loads the untrusted program and serves calls into it.

Run by the harness as ``python _untrusted.py REQUEST_FD REPLY_FD CONFIG_JSON``, usually inside fresh
user/network/pid/mount namespaces. Before any untrusted code runs it joins its job's cgroups (if
given), makes its working folder a size-capped tmpfs (in its own mount namespace only), sets its
resource limits, gives up every privilege (``_privileges``), and enforces Landlock and seccomp. It
then answers requests from the harness: load the program, call a function, read an attribute, and a
few container operations. It replies with plain data only (or opaque handles for other objects); it
never sees the tests, the expected values, or the harness's completion nonce, so nothing the
program does here can forge a verdict."""
import builtins
import ctypes
import itertools
import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _landlock  # noqa: E402
import _privileges  # noqa: E402
import _seccomp  # noqa: E402
import _wire  # noqa: E402

MAX_ITEMS = 100_000
PR_SET_PDEATHSIG = 1
MS_NOSUID, MS_NODEV = 2, 4


def _limit(kind: int, value: int) -> None:
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY and value > hard:
            resource.setrlimit(kind, (hard, hard))


def lock_down(cfg: dict) -> dict:
    """Everything that must happen before untrusted code runs, in this order (the first steps need the
    privileges the later ones give up); returns what is in force."""
    report = {}
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    for folder in cfg.get("cgroups") or []:  # before any memory is charged or process forked
        with open(os.path.join(folder, "cgroup.procs"), "w") as fh:
            fh.write("0")
    report["cgroup"] = bool(cfg.get("cgroups"))
    report["tmpfs"] = bool(cfg.get("tmpfs")) and _mount_tmpfs(cfg)
    os.chdir(cfg["workdir"])  # after the mount: the tmpfs, not the folder beneath it
    mb = 1 << 20
    _limit(resource.RLIMIT_AS, cfg["memory_mb"] * mb)
    _limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])
    if cfg.get("rlimit_nproc", True):
        _limit(resource.RLIMIT_NPROC, cfg["max_processes"])
    _limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mb)
    _limit(resource.RLIMIT_NOFILE, 256)
    _limit(resource.RLIMIT_CORE, 0)
    report.update(_privileges.drop(cfg.get("uid")))
    report["interfaces"] = _interfaces()
    report["pid"] = os.getpid()
    if cfg.get("landlock"):
        report.update(_landlock.restrict(cfg["read_paths"], [cfg["workdir"]], ["/dev/null"]))
    own_network = report["interfaces"] == ["lo"]
    if cfg.get("seccomp"):
        _seccomp.restrict(block_sockets=not own_network)
        report["seccomp"] = True
    else:
        _refuse_sockets()
        report["socket_patch"] = True
    return report


def _mount_tmpfs(cfg: dict) -> bool:
    """Mount a tmpfs of the job's disk size over the working folder: writes beyond it fail (ENOSPC) and
    never reach the host's disk; its pages count against the job's memory cgroup. Only in a mount
    namespace of this job's own (never the caller's); False if the kernel refuses."""
    try:
        if os.readlink("/proc/self/ns/mnt") == cfg["caller_mount_ns"]:
            return False
    except (OSError, KeyError):
        return False
    mb = cfg["tmpfs"]
    options = f"size={mb}m,nr_inodes={max(1024, mb * 256)},mode=0700"
    if cfg.get("uid") is not None:
        options += f",uid={cfg['uid']},gid={cfg['uid']}"
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"tmpfs", cfg["workdir"].encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) == 0


def _interfaces() -> list[str]:
    """Network interfaces of this process's network namespace (only "lo" in a fresh one)."""
    try:
        with open("/proc/self/net/dev") as fh:
            return sorted(line.split(":")[0].strip() for line in fh.readlines()[2:])
    except OSError:
        return []


def _refuse_sockets() -> None:
    """Last resort without seccomp: refuse new sockets in Python (UNIX-domain ones would reach host
    services even from a network namespace). A program that reaches the OS another way (ctypes) is not
    stopped; the isolation report says so."""
    def refuse(*_, **__):
        raise PermissionError("network access is disabled in the sandbox")

    import _socket
    import socket
    for mod in (socket, _socket):
        for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
            if hasattr(mod, name):
                setattr(mod, name, refuse)


class Server:
    def __init__(self, rfd: int, wfd: int, max_frame: int):
        self.rfd, self.wfd, self.max_frame = rfd, wfd, max_frame
        self.globals: dict = {}
        self.handles: dict[int, object] = {}

    # -- values -------------------------------------------------------------------------------
    def ref(self, obj):
        """Non-plain results become handles; numpy scalars become their Python value."""
        if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "shape", None) == ():
            try:
                return _wire.encode(obj.item(), self.ref)
            except Exception:
                pass
        key = id(obj)
        self.handles[key] = obj
        return {"t": "h", "v": key, "type": type(obj).__name__}

    def deref(self, tag, value):
        if tag == "h":
            return self.handles[value]
        if tag == "g":
            return self.globals[value]
        raise _wire.WireError(f"unknown reference {tag!r}")

    def target(self, ref: dict):
        return self.deref(ref["t"], ref["v"])

    def encode(self, obj):
        return _wire.encode(obj, self.ref)

    # -- operations ---------------------------------------------------------------------------
    def op_load(self, msg):
        code = compile(msg["code"], "<program>", "exec")
        self.globals = {"__name__": "__program__", "__builtins__": builtins}
        exec(code, self.globals)
        kinds = {}
        for name, value in list(self.globals.items()):
            if name.startswith("__"):
                continue
            if type(value).__name__ == "module":
                kinds[name] = ["module", value.__name__]
            elif callable(value):
                kinds[name] = ["callable"]
            else:
                try:
                    kinds[name] = ["data", _wire.encode(value)]
                except _wire.WireError:
                    kinds[name] = ["object"]
        return {"globals": kinds}

    def op_call(self, msg):
        fn = self.target(msg["fn"])
        args = [_wire.decode(a, self.deref) for a in msg["args"]]
        kwargs = {k: _wire.decode(v, self.deref) for k, v in msg["kwargs"].items()}
        value = fn(*args, **kwargs)
        mutable = (list, dict, set, bytearray)
        after = {str(i): self.encode(a) for i, a in enumerate(args) if type(a) in mutable}
        after.update({k: self.encode(v) for k, v in kwargs.items() if type(v) in mutable})
        return {"value": self.encode(value), "mutated": after}

    def op_getattr(self, msg):
        return {"value": self.encode(getattr(self.target(msg["obj"]), msg["name"]))}

    def op_dunder(self, msg):
        obj = self.target(msg["obj"])
        args = [_wire.decode(a, self.deref) for a in msg.get("args", [])]
        name = msg["name"]
        if name == "iter":
            items = list(itertools.islice(iter(obj), MAX_ITEMS + 1))
            if len(items) > MAX_ITEMS:
                raise OverflowError(f"iteration yielded more than {MAX_ITEMS} items")
            value = items
        elif name == "len":
            value = len(obj)
        elif name == "getitem":
            value = obj[args[0]]
        elif name == "contains":
            value = args[0] in obj
        elif name == "bool":
            value = bool(obj)
        elif name == "str":
            value = str(obj)
        elif name == "eq":
            value = bool(obj == args[0])
        else:
            raise ValueError(f"unsupported operation {name!r}")
        return {"value": self.encode(value)}

    def serve(self) -> None:
        ops = {"load": self.op_load, "call": self.op_call, "getattr": self.op_getattr, "dunder": self.op_dunder}
        while True:
            try:
                msg = _wire.recv(self.rfd, self.max_frame)
            except _wire.PeerGone:
                return
            try:
                reply = ops[msg["op"]](msg)
            except BaseException as exc:  # the program's exception (incl. SystemExit) is its answer
                reply = {"error": {"type": type(exc).__name__, "builtin": type(exc).__module__ == "builtins",
                                   "exception": isinstance(exc, Exception), "message": _safe_str(exc)}}
            try:
                _wire.send(self.wfd, reply)
            except _wire.WireError as exc:  # unencodable value or frame too large
                _wire.send(self.wfd, {"error": {"type": "TypeError", "builtin": True, "exception": True,
                                                "message": f"result is not transferable: {exc}"}})


def _safe_str(exc) -> str:
    try:
        return str(exc)[:500]
    except BaseException:
        return "<unprintable>"


def main() -> None:
    rfd, wfd, cfg = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    sys.path.extend(p for p in cfg.get("sys_path", []) if p not in sys.path)
    report = lock_down(cfg)
    _wire.send(wfd, {"ready": report})
    Server(rfd, wfd, cfg["max_frame"]).serve()


if __name__ == "__main__":
    main()

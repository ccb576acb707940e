"""Which isolation layers this host offers, probed once per process.

Layers, strongest first: an unshared user + network + pid namespace (``unshare`` from util-linux;
with ``--mount-proc`` the program sees only its own processes and the whole namespace dies with its
first process); Landlock (filesystem writes only beneath the working directory, no TCP, no signals
or ptrace outside the sandbox); a seccomp filter (no kill, ptrace, setsid; no network sockets
without the namespace); a per-program pids cgroup when running as root (the kernel ignores
RLIMIT_NPROC for uid 0), else RLIMIT_NPROC. Missing layers degrade to weaker ones and are reported
by :meth:`Isolation.describe`, never silently."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import _landlock, _seccomp

_WRAPPERS = (
    ("--user", "--map-current-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--user", "--map-current-user", "--net"),
    ("--net",),
)
_PROBE = "import os, socket; print(os.getpid(), len(socket.if_nameindex()))"


@dataclass(frozen=True)
class Isolation:
    """The layers a sandbox uses; build one with :func:`probe` (or by hand, to test a fallback)."""

    wrapper: tuple[str, ...] = ()
    """Command prefix that starts the program process in fresh namespaces (empty: none)."""
    network_namespace: bool = False
    pid_namespace: bool = False
    landlock_abi: int = 0
    cgroup_root: str | None = None
    """Folder under which a pids cgroup per program is created (root only), or None."""
    seccomp: bool = False
    """Install a seccomp filter: no signals, ptrace, setsid/setpgid; only AF_UNIX sockets without a netns."""

    @property
    def contains_signals(self) -> bool:
        """Whether a program is stopped from signalling (killing) processes outside its sandbox."""
        return self.pid_namespace or self.landlock_abi >= 6 or self.seccomp

    def describe(self) -> dict[str, str]:
        """One line per concern: what stops the program there on this host."""
        abi = self.landlock_abi
        network = ("unshared network namespace (only loopback, down)" if self.network_namespace
                   else "seccomp: only AF_UNIX sockets" if self.seccomp
                   else "Landlock denies TCP bind/connect; other sockets refused in Python only" if abi >= 4
                   else "sockets refused in Python only (weak: ctypes can bypass)")
        files = ("Landlock: writes only beneath the working directory, reads only system and Python folders"
                 if abi >= 1 else "none beyond file permissions (working directory is a fresh temp folder)")
        processes = ("pid namespace: all of the program's processes die with it" if self.pid_namespace
                     else "process group kill; seccomp forbids leaving the group" if self.seccomp
                     else "process group + pids cgroup kill" if self.cgroup_root
                     else "process group kill (a program that calls setsid() can escape it)")
        if self.cgroup_root:
            count = "pids cgroup (pids.max)"
        elif os.geteuid() != 0:
            shared = " per user namespace" if "--user" in self.wrapper else " (shared by all programs of this user)"
            count = "RLIMIT_NPROC" + shared
        else:
            count = "none: uid 0 ignores RLIMIT_NPROC and no writable pids cgroup was found"
        layers = [name for name, on in (("pid namespace", self.pid_namespace), ("Landlock signal scoping", abi >= 6),
                                        ("seccomp (no kill, ptrace)", self.seccomp)) if on]
        signals = " + ".join(layers) or "none (the program may signal processes of the same user)"
        return {"network": network, "filesystem": files, "processes": processes, "process_count": count,
                "signals": signals, "limits": "RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, wall-clock kill"}


_lock = threading.Lock()
_probed: Isolation | None = None


def probe() -> Isolation:
    """The strongest isolation this host supports (probed once, then cached for the process)."""
    global _probed
    with _lock:
        if _probed is None:
            _probed = _probe()
        return _probed


def _probe() -> Isolation:
    wrapper, netns, pidns = (), False, False
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare and sys.platform.startswith("linux"):
        for flags in _WRAPPERS:
            cmd = [unshare, *flags, sys.executable, "-s", "-S", "-c", _PROBE]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
            except (OSError, subprocess.TimeoutExpired):
                continue
            fields = out.stdout.split()
            if out.returncode == 0 and len(fields) == 2 and fields[1] == "1":
                wrapper, netns, pidns = (unshare, *flags), True, fields[0] == "1"
                break
    linux = sys.platform.startswith("linux")
    return Isolation(wrapper=wrapper, network_namespace=netns, pid_namespace=pidns,
                     landlock_abi=_landlock.abi_version() if linux else 0, cgroup_root=_pids_cgroup_root(),
                     seccomp=linux and _seccomp.available())


def _pids_cgroup_root() -> str | None:
    """A writable folder for per-program pids cgroups (cgroup v1 ``pids`` or v2 with pids enabled)."""
    if os.geteuid() != 0:
        return None
    candidates = [Path("/sys/fs/cgroup/pids")]
    v2 = Path("/sys/fs/cgroup")
    try:
        if "pids" in (v2 / "cgroup.subtree_control").read_text().split():
            candidates.append(v2)
    except OSError:
        pass
    for base in candidates:
        if not (base / "cgroup.procs").is_file():
            continue
        root = base / "dllm_rl"
        probe_dir = root / f"probe-{uuid.uuid4().hex[:8]}"
        try:
            root.mkdir(exist_ok=True)
            if base == v2:
                (root / "cgroup.subtree_control").write_text("+pids")
            probe_dir.mkdir()
            (probe_dir / "pids.max").write_text("8")
            probe_dir.rmdir()
            return str(root)
        except OSError:
            try:
                probe_dir.rmdir()
            except OSError:
                pass
    return None

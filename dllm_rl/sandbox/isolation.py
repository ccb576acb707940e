"""Which isolation layers this host offers, probed once per process.

Layers, strongest first: unshared network + pid + mount namespaces (``unshare`` from util-linux;
with ``--mount-proc`` the program sees only its own processes and the whole namespace dies with its
first process), inside a user namespace unless the caller is root and the unprivileged uid 65534
can read the Python installation (then the program switches to that uid, which a user namespace
mapping only uid 0 could not hold); Landlock (filesystem writes only beneath the working directory,
no TCP, no signals or ptrace outside the sandbox); a seccomp filter (no kill, ptrace, setsid, no
UNIX-domain sockets, no network sockets without the namespace); per-job pids and memory cgroups when
running as root (the kernel ignores RLIMIT_NPROC for uid 0), else RLIMIT_NPROC. Missing layers
degrade to weaker ones and are reported by :meth:`Isolation.describe`, never silently."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import _landlock, _seccomp

NOBODY = 65534
_NAMESPACES = (
    ("--net", "--pid", "--fork", "--kill-child", "--mount-proc"),  # --mount-proc implies --mount
    ("--net", "--mount"),
    ("--net",),
)
_PROBE = "import os, socket; print(os.getpid(), len(socket.if_nameindex()))"
_CAN_READ = "import os, sys\nfor p in sys.argv[1:]:\n    os.listdir(p) if os.path.isdir(p) else open(p, 'rb').close()"


def read_paths(own_proc: bool) -> list[str]:
    """Folders the program may read beneath: the Python installation and system libraries, and
    /proc when it is the program's own (a pid namespace); never $HOME, /tmp or the project."""
    paths = {"/proc"} if own_proc else set()
    paths |= {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime",
              "/dev/urandom", "/dev/random", "/dev/zero", sys.prefix, sys.base_prefix, sys.exec_prefix,
              sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if p and os.path.exists(p))


@dataclass(frozen=True)
class Isolation:
    """The layers a sandbox uses; build one with :func:`probe` (or by hand, to test a fallback)."""

    wrapper: tuple[str, ...] = ()
    """Command prefix that starts the program process in fresh namespaces (empty: none)."""
    network_namespace: bool = False
    pid_namespace: bool = False
    mount_namespace: bool = False
    """The program has a mount namespace of its own: its working folder becomes a size-capped tmpfs."""
    user_namespace: bool = False
    landlock_abi: int = 0
    pids_cgroup: str | None = None
    """Folder beneath which each job gets a pids cgroup (root only), or None."""
    memory_cgroup: str | None = None
    """Folder beneath which each job gets a memory cgroup (root only), or None."""
    seccomp: bool = False
    """Install a seccomp filter: no signals, ptrace, setsid/setpgid, UNIX-domain sockets, namespaces;
    no sockets at all without a network namespace."""
    uid: int | None = None
    """Unprivileged uid (and gid) the program switches to after its set-up; None: it keeps the
    caller's uid. Capabilities are dropped either way."""

    @property
    def contains_signals(self) -> bool:
        """Whether a program is stopped from signalling (killing) processes outside its sandbox."""
        return self.pid_namespace or self.landlock_abi >= 6 or self.seccomp

    @property
    def runs_as_root(self) -> bool:
        """Whether programs would run as uid 0 of the host (without capabilities, outside any user namespace)."""
        return os.geteuid() == 0 and self.uid is None and not self.user_namespace

    def describe(self) -> dict[str, str]:
        """One line per concern: what stops the program there on this host."""
        abi = self.landlock_abi
        unix = "seccomp refuses UNIX-domain sockets" if self.seccomp else "UNIX-domain sockets refused in Python only (weak)"
        network = (f"unshared network namespace (only loopback, down); {unix}" if self.network_namespace
                   else "seccomp: no sockets (socketpair for streams only)" if self.seccomp
                   else "Landlock denies TCP bind/connect; other sockets refused in Python only (weak)" if abi >= 4
                   else "sockets refused in Python only (weak: ctypes can bypass)")
        files = ("Landlock: writes only beneath the working directory, reads only system and Python folders"
                 if abi >= 1 else "none beyond file permissions (working directory is a fresh temp folder)")
        disk = ("a tmpfs of max_disk_mb over the working folder, in the job's own mount namespace" if self.mount_namespace
                else "the working folder's size, polled every 20 ms: past max_disk_mb the job fails and is killed "
                     "(it can overshoot by what it writes in that time)")
        processes = ("pid namespace: all of the program's processes die with it" if self.pid_namespace
                     else "process group kill; seccomp forbids leaving the group" if self.seccomp
                     else "process group + cgroup kill" if self.pids_cgroup
                     else "process group kill (a program that calls setsid() can escape it)")
        if self.pids_cgroup:
            count = "pids cgroup per job (pids.max)"
        elif os.geteuid() != 0 or self.uid is not None:
            shared = (" per user namespace" if self.user_namespace
                      else " (shared by all programs of this uid)")
            count = "RLIMIT_NPROC" + shared
        else:
            count = "none: uid 0 ignores RLIMIT_NPROC and no writable pids cgroup was found"
        memory = ("memory cgroup per job (job_memory_mb, no swap) + RLIMIT_AS per process" if self.memory_cgroup
                  else "RLIMIT_AS per process only: a job of n processes may use n x memory_mb")
        layers = [name for name, on in (("pid namespace", self.pid_namespace), ("Landlock signal scoping", abi >= 6),
                                        ("seccomp (no kill, ptrace)", self.seccomp)) if on]
        signals = " + ".join(layers) or "none (the program may signal processes of the same user)"
        if self.uid is not None:
            who = f"uid and gid {self.uid}, no supplementary groups"
        elif self.user_namespace:
            who = f"uid 0 inside a user namespace only (uid {os.geteuid()} outside)"
        elif os.geteuid() == 0:
            who = "uid 0 of the host (refused unless allow_root)"
        else:
            who = f"the caller's uid {os.geteuid()}"
        return {"network": network, "filesystem": files, "disk": disk, "processes": processes, "process_count": count,
                "memory": memory, "signals": signals, "privileges": f"{who}; no capabilities, no_new_privs",
                "limits": "RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, wall-clock kill"}


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
    linux = sys.platform.startswith("linux")
    nobody = NOBODY if linux and os.geteuid() == 0 and _can_read_as(NOBODY, read_paths(own_proc=False)) else None
    user = tuple(("--user", "--map-current-user", *flags) for flags in _NAMESPACES)
    # Root that can become nobody: namespaces without a user namespace first (inside one that maps
    # only uid 0 the switch is impossible); anyone else: a user namespace first (it needs no privilege).
    candidates = _NAMESPACES + user if nobody is not None else user + _NAMESPACES
    wrapper, netns, pidns = (), False, False
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare and linux:
        for flags in candidates:
            cmd = [unshare, *flags, sys.executable, "-s", "-S", "-c", _PROBE]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
            except (OSError, subprocess.TimeoutExpired):
                continue
            fields = out.stdout.split()
            if out.returncode == 0 and len(fields) == 2 and fields[1] == "1":
                wrapper, netns, pidns = (unshare, *flags), True, fields[0] == "1"
                break
    userns = "--user" in wrapper
    cgroups = _cgroup_parents() if linux else {}
    return Isolation(wrapper=wrapper, network_namespace=netns, pid_namespace=pidns,
                     mount_namespace=bool({"--mount", "--mount-proc"} & set(wrapper)), user_namespace=userns,
                     landlock_abi=_landlock.abi_version() if linux else 0, pids_cgroup=cgroups.get("pids"),
                     memory_cgroup=cgroups.get("memory"), seccomp=linux and _seccomp.available(),
                     uid=None if userns else nobody)


def _can_read_as(uid: int, paths: list[str]) -> bool:
    """Whether ``uid`` can start this Python and read ``paths`` (not so when they live under a home
    folder only its owner may enter)."""
    try:
        out = subprocess.run([sys.executable, "-S", "-c", _CAN_READ, *paths], user=uid, group=uid, extra_groups=[],
                             cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _cgroup_parents() -> dict[str, str]:
    """For "pids" and "memory": a folder beneath which a job's cgroup limits that controller (root only).

    cgroup v1: this process's own cgroup, so that jobs stay within the caller's own limits (v1 lets a
    cgroup with processes have children). cgroup v2 forbids that except at the root; there, the own
    cgroup if it can (it is the root), else a folder "dllm_rl" at the top of the hierarchy."""
    if os.geteuid() != 0:
        return {}
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in mounts:
        left, _, right = line.partition(" - ")  # "id parent dev root mountpoint ... - fstype source options"
        fields, (fstype, *rest) = left.split(), right.split() or [""]
        if fstype not in ("cgroup", "cgroup2") or len(fields) < 5 or len(rest) < 2:
            continue
        mount_root, mountpoint, options = fields[3], Path(fields[4]), rest[1]
        for controller in ("pids", "memory"):
            if controller in found:
                continue
            if fstype == "cgroup" and controller in options.split(","):
                paths = [p for _, names, p in own if controller in names.split(",")]
                candidates = [_beneath(mountpoint, mount_root, p) for p in paths[:1]]
            elif fstype == "cgroup2" and controller in _words(mountpoint / "cgroup.controllers"):
                paths = [p for hid, names, p in own if hid == "0" and names == ""]
                candidates = [_beneath(mountpoint, mount_root, p) for p in paths[:1]]
                if controller in _words(mountpoint / "cgroup.subtree_control"):
                    candidates.append(mountpoint / "dllm_rl")
            else:
                continue
            for folder in candidates:
                if folder is not None and _usable(folder, controller):
                    found[controller] = str(folder)
                    break
    return found


def _beneath(mountpoint: Path, mount_root: str, path: str) -> Path | None:
    """The folder of cgroup ``path`` under a mount of the hierarchy's ``mount_root``, if it is visible there."""
    rel = os.path.relpath(path, mount_root)
    return None if rel.startswith("..") else mountpoint / rel


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _usable(folder: Path, controller: str) -> bool:
    """Whether a child cgroup of ``folder`` can be made and given a ``controller`` limit (then removed)."""
    probe_dir = folder / f"dllm-rl-probe-{uuid.uuid4().hex[:8]}"
    files = {"pids": ["pids.max"], "memory": ["memory.max", "memory.limit_in_bytes"]}[controller]  # v2, v1
    value = "8" if controller == "pids" else str(64 << 20)
    try:
        if folder.name == "dllm_rl":  # the v2 folder of our own: pass the controller on to the jobs
            folder.mkdir(exist_ok=True)
            (folder / "cgroup.subtree_control").write_text(f"+{controller}")
        probe_dir.mkdir()
        try:
            name = next(n for n in files if (probe_dir / n).exists())
            (probe_dir / name).write_text(value)
            return True
        finally:
            probe_dir.rmdir()
    except (OSError, StopIteration):
        return False

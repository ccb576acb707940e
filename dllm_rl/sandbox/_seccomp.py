"""A seccomp filter through ctypes: the program process may not signal, trace, leave its process group,
reach UNIX-domain sockets or make namespaces.

Refused with EPERM: kill/tkill/tgkill/sigqueue/pidfd signals, ptrace and process_vm_*, setsid and
setpgid (so a process-group kill always reaches every process), namespace and mount calls (unshare,
setns, clone with a CLONE_NEW* flag; clone3, whose flags a filter cannot read, answers ENOSYS so
libc falls back to clone), bpf, perf_event_open, keyrings and io_uring (whose operations bypass
syscall filters); every AF_UNIX socket (Landlock does not cover connecting to one, and they lead to
the Docker daemon, D-Bus or databases), and every socket at all without a network namespace.
socketpair is allowed for SOCK_STREAM only: a connected stream pair cannot be pointed at another
address (asyncio and multiprocessing need one), a datagram pair could ``sendto`` any socket.
Syscalls of another ABI (i386, x32) are refused too. Stdlib only: the child script imports this
file by path."""
from __future__ import annotations

import ctypes
import errno
import platform

PR_SET_NO_NEW_PRIVS, PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 21, 22, 2
LD_W_ABS, AND_K, JEQ_K, JGE_K, RET_K = 0x20, 0x54, 0x15, 0x35, 0x06
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK = 1, 1, 0xF
CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
ARG0, ARG1 = 16, 24  # offsets of the low 32 bits of the first two arguments in seccomp_data (little endian)

# name -> number, per architecture (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: asm-generic)
_NAMES = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "pidfd_open",
          "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "setsid", "setpgid", "unshare", "setns",
          "mount", "umount2", "pivot_root", "chroot", "bpf", "perf_event_open", "add_key", "request_key", "keyctl",
          "io_uring_setup", "io_uring_enter", "io_uring_register")
# arch, denied numbers (in _NAMES order), then socket, socketpair, clone, clone3
_TABLES = {
    "x86_64": (0xC000003E, (62, 200, 234, 129, 297, 424, 434, 438, 101, 310, 311, 112, 109, 272, 308, 165, 166,
                            155, 161, 321, 298, 248, 249, 250, 425, 426, 427), (41, 53, 56, 435)),
    "aarch64": (0xC00000B7, (129, 130, 131, 138, 240, 424, 434, 438, 117, 270, 271, 157, 154, 97, 268, 40, 39, 41,
                             51, 280, 241, 217, 218, 219, 425, 426, 427), (198, 199, 220, 435)),
}
X32_BIT = 0x40000000


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Filter))]


def available() -> bool:
    """Seccomp filters are supported here (Linux with seccomp, an architecture this module knows)."""
    if platform.machine() not in _TABLES:
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0
    except (OSError, AttributeError):
        return False


def _assemble(machine: str, block_sockets: bool) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k); jumps to the labels "allow", "deny" and the argument checks
    are resolved at the end."""
    arch, numbers, (socket_nr, socketpair_nr, clone_nr, clone3_nr) = _TABLES[machine]
    assert len(numbers) == len(_NAMES)
    body = [("ld", 4), ("jeq", arch, 1, 0), ("ret", RET_ERRNO | errno.EPERM), ("ld", 0)]
    if machine == "x86_64":
        body.append(("jge", X32_BIT, "deny", 0))
    body += [("jeq", nr, "deny", 0) for nr in numbers]
    body += [("jeq", socket_nr, "deny" if block_sockets else "socket", 0), ("jeq", socketpair_nr, "socketpair", 0),
             ("jeq", clone_nr, "clone", 0), ("jeq", clone3_nr, "nosys", 0), ("ret", RET_ALLOW)]
    labels = {"socket": len(body)}
    body += [("ld", ARG0), ("jeq", AF_UNIX, "deny", "allow")]
    labels["socketpair"] = len(body)
    body += [("ld", ARG1), ("and", SOCK_TYPE_MASK), ("jeq", SOCK_STREAM, "allow", "deny")]
    labels["clone"] = len(body)
    body += [("ld", ARG0), ("and", CLONE_NEW_ANY), ("jeq", 0, "allow", "deny")]
    labels["nosys"] = len(body)
    body.append(("ret", RET_ERRNO | errno.ENOSYS))
    labels["allow"] = len(body)
    body.append(("ret", RET_ALLOW))
    labels["deny"] = len(body)
    body.append(("ret", RET_ERRNO | errno.EPERM))
    out = []
    for i, ins in enumerate(body):
        resolve = lambda t: labels[t] - i - 1 if isinstance(t, str) else t  # noqa: E731
        if ins[0] == "ld":
            out.append((LD_W_ABS, 0, 0, ins[1]))
        elif ins[0] == "ret":
            out.append((RET_K, 0, 0, ins[1]))
        elif ins[0] == "and":
            out.append((AND_K, 0, 0, ins[1]))
        else:
            out.append((JEQ_K if ins[0] == "jeq" else JGE_K, resolve(ins[2]), resolve(ins[3]), ins[1]))
    return out


def restrict(block_sockets: bool) -> None:
    """Install the filter on this process (inherited by its children). Raises OSError on failure."""
    program = _assemble(platform.machine(), block_sockets)
    filters = (_Filter * len(program))(*[_Filter(*ins) for ins in program])
    prog = _Program(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")

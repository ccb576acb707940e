"""Give up every privilege of the program process before untrusted code runs (ctypes, stdlib only).

The process arrives as root when the caller is root (uid 0 in the host's user namespace, or in a
user namespace of its own), with every capability. After :func:`drop` it has none left and cannot
get one back: the capability bounding set and the ambient set are empty, so no execve (of a setuid
or file-capability binary, or as uid 0) grants any; effective, permitted and inheritable sets are
zero; no_new_privs is set. Where the caller gave an unprivileged uid (65534, nobody) it also
switches to that uid and gid with no supplementary groups, so files of root are the host's usual
"others" to it. The child script imports this file by path."""
from __future__ import annotations

import ctypes
import os

PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 23, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522  # two 32-bit words per set


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63  # dropping a capability the kernel does not know fails harmlessly


def capabilities() -> int:
    """Effective | permitted | inheritable capabilities of this process, as one bit mask (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0), (ctypes.c_uint32 * 6)()
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    return (data[0] | data[1] | data[2]) | (data[3] | data[4] | data[5]) << 32


def drop(uid: int | None) -> dict:
    """Drop all capabilities for good, then switch to ``uid`` (as uid and gid) if given; raises OSError
    if any capability is left, so a program never runs with one."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(_last_cap() + 1):  # needs CAP_SETPCAP; without it there is nothing to keep anyway
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from uid 0 to non-zero: the kernel clears the capability sets too
    header, empty = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0), (ctypes.c_uint32 * 6)()
    if libc.capset(header, empty) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    bounding = sum(libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 for cap in range(_last_cap() + 1))
    if capabilities() or (bounding and os.getuid() == 0):
        raise OSError(1, "capabilities are left after dropping them")
    return {"uid": os.getuid(), "gid": os.getgid(), "capabilities": 0, "bounding_set": bounding}

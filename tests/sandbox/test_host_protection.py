"""What a program must not reach even when the caller is root: UNIX sockets of host services, imports in
the trusted harness, more memory or disk than its job's share, and any privilege."""
import dataclasses
import os
import socket
import time

import pytest

from dllm_rl.sandbox import Isolation, Job, Limits, RootRefused, Sandbox, probe

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(5, 0) == 5"]
FAST = Limits(timeout=6.0, test_timeout=3.0, start_timeout=5.0)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(FAST, workers=2) as sb:
        yield sb


def test_no_unix_domain_sockets(sandbox, tmp_path):
    # Listeners as a Docker daemon, D-Bus or syslog would have them: pathname stream and datagram sockets,
    # and an abstract one (no file at all). Every route must fail and deliver nothing.
    stream_path, dgram_path = str(tmp_path / "stream.sock"), str(tmp_path / "dgram.sock")
    abstract = f"\0dllm-rl-test-{os.getpid()}-{time.monotonic_ns()}"
    listeners = []
    for kind, address in ((socket.SOCK_STREAM, stream_path), (socket.SOCK_STREAM, abstract), (socket.SOCK_DGRAM, dgram_path)):
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(address)
        if kind == socket.SOCK_STREAM:
            s.listen()
        s.setblocking(False)
        listeners.append(s)
    fifo_path = str(tmp_path / "pipe")  # a named pipe, as some services read commands from
    os.mkfifo(fifo_path)
    fifo = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK)
    for path in (tmp_path, stream_path, dgram_path, fifo_path):  # file permissions alone must not be what stops it
        os.chmod(path, 0o777)
    routes = {
        "pathname": f"s = socket.socket(socket.AF_UNIX)\ns.connect({stream_path!r})\ns.sendall(b'x')\n",
        "abstract": f"s = socket.socket(socket.AF_UNIX)\ns.connect({abstract!r})\ns.sendall(b'x')\n",
        "socketpair_sendto": f"a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.sendto(b'x', {dgram_path!r})\n",
        "fifo": f"import os\nos.write(os.open({fifo_path!r}, os.O_WRONLY | os.O_NONBLOCK), b'x')\n",
    }
    try:
        verdicts = sandbox.map([Job("import socket\n" + code + ADD, ADD_TESTS) for code in routes.values()])
        for name, verdict in zip(routes, verdicts):
            assert not any(verdict.passed), (name, verdict.error)
        for s in listeners[:2]:
            with pytest.raises(BlockingIOError):
                s.accept()
        with pytest.raises(BlockingIOError):
            listeners[2].recv(16)
        assert os.read(fifo, 16) == b""
    finally:
        for s in listeners:
            s.close()
        os.close(fifo)
    # A connected stream pair reaches nobody else, and asyncio needs one for its event loop.
    local = ("import asyncio, socket\na, b = socket.socketpair()\na.sendall(b'hi')\nassert b.recv(2) == b'hi'\n"
             "async def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
             "def double(x):\n    return asyncio.run(twice(x))\n")
    assert sandbox.run(Job(local, ["assert double(4) == 8"])).all_passed


def _harness_maps() -> str:
    """Memory maps of this process's harness children: every extension module they imported shows up."""
    maps = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                is_harness = b"_harness.py" in fh.read()
            if ppid == os.getpid() and is_harness:
                with open(f"/proc/{pid}/maps") as fh:
                    maps.append(fh.read())
        except (OSError, ValueError, IndexError):
            pass
    return "\n".join(maps)


def test_harness_imports_nothing_the_program_names():
    # sqlite3 and curses load C extensions: if the harness imported them, its memory maps would show them.
    program = "import math\nimport sqlite3 as db\nimport types\nterm = types.ModuleType('curses')\n" + ADD
    tests = ["assert math.isclose(add(0.1, 0.2), 0.3)", "db.connect(':memory:')", "assert term.wrapper"]
    with Sandbox(FAST, workers=1) as sb:
        verdict = sb.run(Job(program, tests))
        maps = _harness_maps()
    assert maps, "no harness process found"
    assert "_sqlite3" not in maps and "_curses" not in maps
    assert verdict.passed == [True, False, False]  # math still works: the harness imports it by its own list


def test_memory_limit_holds_for_the_whole_job(sandbox):
    if not sandbox.isolation.memory_cgroup:
        pytest.skip("no writable memory cgroup here (needs root and a cgroup v1 or v2 memory controller)")
    # Each process stays well under memory_mb (its own RLIMIT_AS); four of them together do not fit the job.
    program = ("import os, time\npids = []\nfor _ in range({n}):\n    pid = os.fork()\n    if pid == 0:\n"
               "        block = b'x' * (100 << 20)\n        time.sleep(0.5)\n        os._exit(0)\n    pids.append(pid)\n"
               "ok = all(os.waitpid(p, 0)[1] == 0 for p in pids)\ndef add(a, b):\n    return a + b if ok else None\n")
    limits = dataclasses.replace(FAST, memory_mb=256)
    one, four = sandbox.map([Job(program.format(n=1), ADD_TESTS), Job(program.format(n=4), ADD_TESTS)], [limits] * 2)
    assert one.all_passed, one.error  # one such process fits: the limit is the job's, not tighter
    assert not any(four.passed)


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs", "size_watch"])
def test_disk_limit_holds_for_the_whole_job(tmpfs):
    iso = probe()
    if tmpfs and not iso.mount_namespace:
        pytest.skip("no mount namespace here: the working folder cannot be a tmpfs")
    iso = iso if tmpfs else dataclasses.replace(iso, mount_namespace=False)
    # Every file is under max_file_mb; together they exceed the job's 20 MB.
    program = "for i in range({n}):\n    with open(f'f{{i}}', 'wb') as fh:\n        fh.write(b'x' * (3 << 20))\n" + ADD
    limits = dataclasses.replace(FAST, max_disk_mb=20)
    with Sandbox(limits, workers=2, isolation=iso) as sb:
        small, big = sb.map([Job(program.format(n=4), ADD_TESTS), Job(program.format(n=12), ADD_TESTS)])
    assert small.all_passed, small.error
    assert not any(big.passed)
    if tmpfs:  # the writes went to memory the job's cgroup pays for, and failed at the cap
        assert big.isolation["tmpfs"] is True and "No space left" in big.error, (big.status, big.error)
    else:  # they went to the host's disk, and the job was stopped at the cap
        assert big.status == "disk_limit", (big.status, big.error)
    assert not os.path.exists(big.workdir)


PRIVILEGED = """
import ctypes, os, socket, stat

libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_READ, PR_GET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET = 23, 39, 47, 1


class TimeVal(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


def sethostname():  # to the name it already has: harmless even if it worked
    name = socket.gethostname().encode()
    return libc.sethostname(name, len(name)) == 0


def settimeofday():  # to the time it already is
    now = TimeVal()
    libc.gettimeofday(ctypes.byref(now), None)
    return libc.settimeofday(ctypes.byref(now), None) == 0


def mknod():
    os.mknod("null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def chown():
    open("mine", "w").close()
    os.chown("mine", 12345, 12345)


def user_namespace():  # clone into a new user namespace, where the child would hold every capability
    import platform
    pid = libc.syscall({{"x86_64": 56, "aarch64": 220}}[platform.machine()], 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    return pid > 0


def environ():  # the test process's environment
    with open("/proc/{pid}/environ", "rb") as fh:
        return fh.read() or False


def probe():
    out = {{}}
    for call in (sethostname, settimeofday, mknod, chown, user_namespace, environ):
        try:
            out[call.__name__] = call() is not False
        except OSError:
            out[call.__name__] = False
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    assert libc.capget(header, data) == 0
    out["capabilities"] = list(data)
    out["bounding"] = [c for c in range(64) if libc.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1]
    out["ambient"] = [c for c in range(64) if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1]
    out["no_new_privs"] = libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    out["uid"] = os.getresuid()
    return out
"""


def test_program_holds_no_privileges(sandbox):
    verdict = sandbox.run(Job(PRIVILEGED.format(pid=os.getpid()), outputs=["probe()"]))
    assert verdict.output_ok == [True], verdict.error
    got = verdict.outputs[0]
    attempts = ("sethostname", "settimeofday", "mknod", "chown", "user_namespace", "environ")
    assert {k: got[k] for k in attempts} == dict.fromkeys(attempts, False)
    assert got["capabilities"] == [0] * 6 and got["bounding"] == [] and got["ambient"] == []
    assert got["no_new_privs"] == 1
    if sandbox.isolation.uid is not None:
        assert got["uid"] == (sandbox.isolation.uid,) * 3


def test_root_without_user_namespace_is_refused_unless_allowed(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("only a root caller can make the program run as root")
    iso = probe()
    bare = Isolation(landlock_abi=iso.landlock_abi, seccomp=iso.seccomp)  # no wrapper: what a host without unshare gets
    if not bare.contains_signals:
        pytest.skip("neither Landlock >= 6 nor seccomp here")
    monkeypatch.delenv("DLLM_RL_SANDBOX_ALLOW_ROOT", raising=False)
    with pytest.raises(RootRefused, match="DLLM_RL_SANDBOX_ALLOW_ROOT") as refused:
        Sandbox(FAST, isolation=bare).run(Job(ADD, ADD_TESTS))
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("DLLM_RL_SANDBOX_ALLOW_ROOT", "1")
    with Sandbox(FAST, isolation=bare) as allowed:  # opted in: it runs, still without any capability
        verdict = allowed.run(Job(PRIVILEGED.format(pid=os.getpid()), outputs=["probe()"]))
    assert verdict.output_ok == [True], verdict.error
    assert verdict.outputs[0]["capabilities"] == [0] * 6 and not verdict.outputs[0]["mknod"]

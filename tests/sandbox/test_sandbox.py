"""The sandbox: verdicts only the harness can give, limits that hold, and a host left as it was."""
import os
import socket
import time

import pytest

from dllm_rl.sandbox import Isolation, Job, Limits, Sandbox, WeakIsolation, probe

ADD = "def add(a, b):\n    return a + b\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(5, 0) == 5", "assert add(2.5, 0.5) == 3.0"]
FAST = Limits(timeout=4.0, test_timeout=2.0, start_timeout=4.0)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(FAST, workers=4) as sb:
        yield sb


def leftover_processes(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (every program process carries its folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_correct_program_passes_and_wrong_one_fails_per_test(sandbox):
    good, wrong = sandbox.map([Job(ADD, ADD_TESTS), Job(WRONG_ADD, ADD_TESTS)])
    assert good.passed == [True, True, True] and good.completed and good.status == "ok"
    assert wrong.passed == [False, True, False] and wrong.pass_rate == pytest.approx(1 / 3)


def test_isolation_layers_in_force_on_this_host(sandbox):
    iso = sandbox.isolation
    verdict = sandbox.run(Job(ADD, ADD_TESTS[:1]))
    if iso.network_namespace:
        assert verdict.isolation["interfaces"] == ["lo"]
    if iso.pid_namespace:
        assert verdict.isolation["pid"] == 1
    if iso.landlock_abi >= 1:
        assert verdict.isolation["filesystem"] is True
    if iso.mount_namespace:
        assert verdict.isolation["tmpfs"] is True
    assert verdict.isolation["capabilities"] == 0
    assert set(iso.describe()) == {"network", "filesystem", "disk", "processes", "process_count", "memory", "signals",
                                   "privileges", "limits"}


# Each attack is a wrong solution (add returns 0) that tries to look like a pass some other way.
ATTACKS = {
    "sys_exit_at_import": "import sys\nsys.exit(0)\n" + WRONG_ADD,
    "sys_exit_in_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "exit_builtin": "def add(a, b):\n    exit()\n",
    "os_exit_at_import": "import os\n" + WRONG_ADD + "os._exit(0)\n",
    "os_exit_in_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raise_keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "fake_success_output": ("import sys\nprint('ALL TESTS PASSED')\nprint('{\"passed\": [true, true, true], \"status\": \"ok\"}')\n"
                            "sys.stderr.write('OK\\n')\ndef add(a, b):\n    return 0\n"),
    "eq_always_true": ("class Yes:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
                       "    def __bool__(self): return True\ndef add(a, b):\n    return Yes()\n"),
    "int_subclass_eq": "class I(int):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return I(0)\n",
    "patch_builtins": ("import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
                       "builtins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\ndef add(a, b):\n    return 0\n"),
    "forge_reply_frames": ("import os, json, struct\nmsg = json.dumps({'value': 3}).encode()\n"
                           "for fd in range(3, 256):\n    try: os.write(fd, struct.pack('>I', len(msg)) + msg)\n"
                           "    except OSError: pass\ndef add(a, b):\n    return 0\n"),
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return 0\n",
    "kill_everything": ("import os, signal\nfor pid in (-1, 0, 1):\n    try: os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError: pass\ndef add(a, b):\n    return 0\n"),
    "kill_visible_processes": ("import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
                               "        try: os.kill(int(p), signal.SIGKILL)\n        except OSError: pass\n"
                               "def add(a, b):\n    return 0\n"),
    "infinite_loop": "def add(a, b):\n    while True:\n        pass\n",
    "sleep_at_import": "import time\ntime.sleep(60)\n" + ADD,
    "unbounded_memory": "def add(a, b):\n    chunks = []\n    while True:\n        chunks.append(bytearray(1 << 26))\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n" + ADD,
    "fork_and_hide": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
                      "    os._exit(0)\ndef add(a, b):\n    return 0\n"),
    "huge_output": "import sys\nfor _ in range(64):\n    sys.stdout.write('x' * (1 << 20))\ndef add(a, b):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_fail_within_timeout_and_leave_nothing_behind(sandbox, name):
    start = time.monotonic()
    verdict = sandbox.run(Job(ATTACKS[name], ADD_TESTS))
    took = time.monotonic() - start
    assert not any(verdict.passed), (verdict.status, verdict.error)
    assert took < FAST.timeout + FAST.start_timeout, took
    assert not leftover_processes(verdict.workdir)
    assert not os.path.exists(verdict.workdir)
    assert sandbox.run(Job(ADD, ADD_TESTS)).all_passed  # the harness survived and is reused


def test_huge_output_is_capped(sandbox):
    verdict = sandbox.run(Job("print('hello')\n" + "print('y' * 100000)\n" + ADD, ADD_TESTS[:1]))
    assert verdict.stdout.startswith("hello\n") and len(verdict.stdout) == FAST.max_output_bytes
    assert verdict.all_passed


def test_no_writes_outside_the_working_folder(sandbox, tmp_path):
    if sandbox.isolation.landlock_abi < 1:
        pytest.skip("Landlock unavailable: writes are only confined by file permissions")
    targets = [tmp_path / "escape.txt", "/tmp/dllm_rl_escape_probe", "../escape.txt", os.path.expanduser("~/escape")]
    program = f"import os\nfor t in {[str(t) for t in targets]!r}:\n    open(t, 'w').write('x')\n" + ADD
    verdict = sandbox.run(Job(program, ADD_TESTS))
    assert not any(verdict.passed) and "PermissionError" in verdict.error
    assert not any(os.path.exists(t) for t in targets[:2] + targets[3:])
    inside = sandbox.run(Job("open('mine.txt', 'w').write('ok')\nimport os\nos.mkdir('sub')\n" + ADD, ADD_TESTS))
    assert inside.all_passed  # its own folder is writable


def test_no_reads_of_home_or_other_folders(sandbox, tmp_path):
    if sandbox.isolation.landlock_abi < 1:
        pytest.skip("Landlock unavailable")
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    verdict = sandbox.run(Job(f"data = open({str(secret)!r}).read()\n" + ADD, ADD_TESTS))
    assert not any(verdict.passed) and "PermissionError" in verdict.error


def test_environment_is_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    program = "import os\ndef env():\n    return dict(os.environ)\n"
    verdict = sandbox.run(Job(program, ["seen = env()", "assert 'HF_TOKEN' not in seen", "assert seen['HOME'] != '/root'"]))
    assert verdict.all_passed, verdict


def test_no_network(sandbox):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    program = (f"import socket\ndef probe():\n    out = []\n    try:\n        socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)\n"
               f"        out.append('tcp')\n    except OSError:\n        pass\n    try:\n"
               f"        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp.getsockname()[1]}))\n"
               f"        out.append('udp')\n    except OSError:\n        pass\n    return out\n")
    verdict = sandbox.run(Job(program, ["r = probe()", "assert 'tcp' not in r"]))
    assert verdict.all_passed, verdict
    time.sleep(0.2)
    with pytest.raises(BlockingIOError):
        tcp.accept()
    with pytest.raises(BlockingIOError):
        udp.recvfrom(10)
    tcp.close(), udp.close()


def test_timed_out_test_fails_alone_and_later_tests_get_a_fresh_process(sandbox):
    program = "def f(x):\n    while x == 0:\n        pass\n    return x\n"
    verdict = sandbox.run(Job(program, ["assert f(0) == 0", "assert f(1) == 1", "assert f(2) == 2"]))
    assert verdict.passed == [False, True, True]


def test_crash_fails_only_its_test(sandbox):
    program = "import os\ndef f(x):\n    if x == 0:\n        os._exit(0)\n    return x\n"
    verdict = sandbox.run(Job(program, ["assert f(1) == 1", "assert f(0) == 0", "assert f(2) == 2"]))
    assert verdict.passed == [True, False, True]


def test_exceptions_from_the_program_reach_the_tests(sandbox):
    program = "class Custom(Exception):\n    pass\ndef f(x):\n    if x < 0:\n        raise ValueError('negative')\n    raise Custom('mine')\n"
    tests = ["try:\n    f(-1)\n    raise AssertionError\nexcept ValueError as e:\n    assert 'negative' in str(e)",
             "try:\n    f(1)\nexcept ValueError:\n    raise AssertionError('wrong type')\nexcept Exception:\n    pass"]
    assert sandbox.run(Job(program, tests)).all_passed


def test_objects_generators_and_in_place_mutation(sandbox):
    program = ("class Stack:\n    def __init__(self): self.items = []\n    def push(self, x): self.items.append(x)\n"
               "    def pop(self): return self.items.pop()\n    def __len__(self): return len(self.items)\n"
               "    def __eq__(self, other): return isinstance(other, Stack) and self.items == other.items\n"
               "def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
               "def sort_in_place(xs):\n    xs.sort()\n")
    tests = ["s = Stack(); s.push(1); s.push(2)\nassert len(s) == 2 and s.pop() == 2 and s.items == [1]",
             "a, b = Stack(), Stack(); a.push(3); b.push(3)\nassert a == b and a != 3",
             "assert list(evens(7)) == [0, 2, 4, 6]",
             "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]"]
    verdict = sandbox.run(Job(program, tests))
    assert verdict.passed == [True, True, True, True], verdict.error


def test_builtins_and_prelude_come_from_the_harness_not_the_program(sandbox):
    # The program redefines a helper the tests use and shadows a builtin; the tests keep the trusted ones.
    program = "def helper(x):\n    return 0\ndef abs(x):\n    return 0\ndef solve(x):\n    return x * 2\n"
    prelude = "def helper(x):\n    return x * 2\n"
    tests = ["assert solve(4) == helper(4)", "assert abs(-3) == 3"]
    assert sandbox.run(Job(program, tests, prelude=prelude)).all_passed
    assert not sandbox.run(Job(program, ["assert helper(4) == 8"])).all_passed  # without the prelude: the program's


def test_outputs_of_a_reference_program(sandbox):
    verdict = sandbox.run(Job(ADD, outputs=["add(*_DATA[0])", "add(*_DATA[1])", "add('a', 1)"],
                              data=[(1, 2), ((1,), (2, 3))]))
    assert verdict.outputs == [3, (1, 2, 3), None]
    assert len(verdict.seconds) == 3


def test_missing_entry_point_is_a_load_error(sandbox):
    verdict = sandbox.run(Job("x = 1\n", ["assert candidate(1)"], bind={"candidate": "solve"}))
    assert verdict.status == "load_error" and "solve" in verdict.error and verdict.passed == [False]


def test_verdicts_are_deterministic(sandbox):
    program = "def order(xs):\n    return list(set(xs))\n"  # set order depends on the hash seed
    tests = ["assert order(['b', 'a', 'c', 'd']) == ['b', 'a', 'c', 'd']"]
    runs = {tuple(v.passed) for v in sandbox.map([Job(program, tests)] * 4)}
    assert len(runs) == 1


def test_weak_isolation_is_refused_unless_allowed():
    weak = Isolation()
    with pytest.raises(WeakIsolation, match="allow_weak_isolation"):
        Sandbox(FAST, isolation=weak).run(Job(ADD, ADD_TESTS))


def test_verdict_rules_hold_without_namespaces_or_landlock():
    # Only harmless programs here: without the layers, nothing stops a program from signalling this user's processes.
    with Sandbox(FAST, workers=2, isolation=Isolation(), allow_weak_isolation=True, allow_root=True) as weak:
        good, exits, liar, net = weak.map([
            Job(ADD, ADD_TESTS), Job(ATTACKS["sys_exit_at_import"], ADD_TESTS), Job(ATTACKS["eq_always_true"], ADD_TESTS),
            Job("import socket\ndef f():\n    socket.socket()\n    return 1\n", ["assert f() == 1"])])
    assert good.all_passed and not any(exits.passed) and not any(liar.passed)
    assert not net.passed[0] and net.isolation.get("socket_patch") is True


def test_seccomp_alone_refuses_signals_leaving_the_group_and_all_sockets():
    # The layer for hosts without namespaces or Landlock >= 6. Probes are harmless even if a call got
    # through: signal 0 and SIGWINCH to the harness.
    if not probe().seccomp:
        pytest.skip("seccomp unavailable")
    program = ("import os, signal, socket\ndef probe():\n    out = {}\n"
               "    for name, call in [('signal0', lambda: os.kill(os.getppid(), 0)),\n"
               "                       ('sigwinch', lambda: os.kill(os.getppid(), signal.SIGWINCH)),\n"
               "                       ('setsid', os.setsid), ('setpgid', lambda: os.setpgid(0, 0)),\n"
               "                       ('tcp', lambda: socket.socket().close()),\n"
               "                       ('unix', lambda: socket.socket(socket.AF_UNIX).close()),\n"
               "                       ('stream_pair', lambda: [s.close() for s in socket.socketpair()])]:\n"
               "        try:\n            call()\n            out[name] = 'allowed'\n"
               "        except PermissionError:\n            out[name] = 'refused'\n    return out\n")
    with Sandbox(FAST, isolation=Isolation(seccomp=True), allow_root=True) as only_seccomp:  # strict mode accepts it
        verdict = only_seccomp.run(Job(program, outputs=["probe()"]))
    assert verdict.outputs == [{"signal0": "refused", "sigwinch": "refused", "setsid": "refused", "setpgid": "refused",
                                "tcp": "refused", "unix": "refused", "stream_pair": "allowed"}]


def test_probe_is_cached():
    assert probe() is probe()

"""Shared test setup."""
import os
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

# Tests never touch the network: the Hugging Face libraries read these when first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add overhead, and spin badly on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _replay(prof) -> tuple[int, int]:
    """(peak, net) bytes allocated during a profile: its allocation and free events replayed in time order."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    net = peak = 0
    for _, nbytes in events:
        net += nbytes
        peak = max(peak, net)
    return peak, net


def _profiled(fn) -> tuple[object, int, int]:
    """(fn(), peak bytes, net bytes) of the CPU allocations made while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return (result, *_replay(prof))


@pytest.fixture
def memory():
    """Peak CPU memory of a call, from the profiler's allocation events (memory bounds as tests)."""
    return SimpleNamespace(profiled=_profiled)


def _install_dist(root, dist, entry_points, modules=None):
    """What an installed distribution leaves on its path entry: metadata with entry points
    (``{"tasks": {name: "module:attr"}}``), and the given modules' source files."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[dllm_rl.{kind}]\n" + "".join(f"{name} = {target}\n" for name, target in names.items())
        for kind, names in entry_points.items()))
    for name, text in (modules or {}).items():
        (root / name).write_text(text)


@pytest.fixture
def install_dist():
    """``install_dist(root, dist, entry_points, modules=None)``: a fake installed plugin package under root."""
    return _install_dist

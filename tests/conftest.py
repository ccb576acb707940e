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

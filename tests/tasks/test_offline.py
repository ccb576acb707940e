"""No network and no cached data: every task that reads hub or downloaded data fails at once with one
line naming the fix, after probing the network once (no retry loop), and the Hub's offline mode is on
for the rest of the process."""
import os
import socket
import time

import datasets.config
import pytest
from huggingface_hub import constants

from dllm_rl import hub_data, registry
from dllm_rl.errors import UsageError

pytest.importorskip("evalplus")
from dllm_rl.tasks import evalplus_task  # noqa: E402

HUB_FIX = "--set task.data_path=DIR"
EVALPLUS_FIX = "--set task.data_path=FILE"
CASES = [  # task, what the line must name
    ("gsm8k", ["hf download openai/gsm8k --repo-type dataset", HUB_FIX]),
    ("math", ["hf download HuggingFaceH4/MATH-500 --repo-type dataset", HUB_FIX]),
    ("mbpp", ["hf download google-research-datasets/mbpp --repo-type dataset", HUB_FIX]),
    ("acecoder", ["hf download TIGER-Lab/AceCode-87K --repo-type dataset", HUB_FIX]),
    ("humaneval-plus", ["HumanEvalPlus.jsonl.gz", EVALPLUS_FIX, "HUMANEVAL_OVERRIDE_PATH=FILE"]),
    ("mbpp-plus", ["MbppPlus.jsonl.gz", EVALPLUS_FIX, "MBPP_OVERRIDE_PATH=FILE"]),
]


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """A user without offline flags on a machine with no network (every name lookup and connection
    refused, and counted) and empty Hugging Face and EvalPlus caches."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError(101, "Network is unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(hub_data, "_hub_probed", False)
    monkeypatch.setattr(hub_data, "_hub_failure", None)
    import evalplus.data.humaneval
    import evalplus.data.mbpp
    import evalplus.data.utils

    monkeypatch.setattr(evalplus.data.utils, "CACHE_DIR", str(tmp_path / "evalplus"))
    monkeypatch.setattr(evalplus.data.humaneval, "HUMANEVAL_OVERRIDE_PATH", None)
    monkeypatch.setattr(evalplus.data.mbpp, "MBPP_OVERRIDE_PATH", None)
    evalplus_task._release_unreachable.cache_clear()
    yield attempts
    evalplus_task._release_unreachable.cache_clear()


def build(name):
    cls = registry.get("tasks", name).load()
    return cls(cls.Config())


@pytest.mark.parametrize("name,names", CASES, ids=[c[0] for c in CASES])
def test_offline_without_data_is_one_line_naming_the_fix(no_network, name, names):
    start = time.monotonic()
    with pytest.raises(UsageError) as err:
        build(name).examples("test")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"task {name!r} ")
    assert "Network is unreachable (test)" in message  # the probe's reason
    for part in names:
        assert part in message
    assert len(no_network) == 1  # one probe, no retry loop
    assert time.monotonic() - start < 15  # generous: it is well under a second
    if name not in ("humaneval-plus", "mbpp-plus"):
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_hub_is_probed_once_a_process(no_network):
    for name in ("gsm8k", "mbpp", "math"):
        with pytest.raises(UsageError, match="cannot be reached"):
            build(name).examples("test")
    assert len(no_network) == 1


def test_users_offline_mode_is_trusted_without_a_probe(no_network, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match=r"offline mode is on \(HF_HUB_OFFLINE\), and there is no cached copy"):
        build("gsm8k").examples("test")
    assert no_network == []


def test_shipped_humaneval_needs_no_network(no_network):
    assert len(build("humaneval").examples("test")) == 164
    assert no_network == []


FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "code")


def test_the_named_fixes_work_offline(no_network, tmp_path):
    """What the lines say to do: an ``hf download`` snapshot folder, and EvalPlus's release file as is."""
    import gzip

    for split in ("train", "test", "prompt"):
        rows = datasets.Dataset.from_json(os.path.join(FIXTURES, "mbpp", f"{split}.jsonl"))
        rows.to_parquet(str(tmp_path / "snapshot" / "full" / f"{split}-00000-of-00001.parquet"))
    mbpp = registry.get("tasks", "mbpp").load()
    assert len(mbpp(mbpp.Config(data_path=str(tmp_path / "snapshot"))).examples("test")) == 4
    release = tmp_path / "HumanEvalPlus.jsonl.gz"
    with open(os.path.join(FIXTURES, "humanevalplus.jsonl"), "rb") as f:
        release.write_bytes(gzip.compress(f.read()))
    plus = registry.get("tasks", "humaneval-plus").load()
    assert plus(plus.Config(data_path=str(release))).examples("test")
    gsm8k = registry.get("tasks", "gsm8k").load()
    assert gsm8k(gsm8k.Config(data_path=os.path.join(FIXTURES, "..", "gsm8k.jsonl"))).examples("test")
    assert no_network == []

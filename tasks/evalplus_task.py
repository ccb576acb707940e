"""EvalPlus differential testing (HumanEval+, MBPP+) on the sandbox.

EvalPlus judges a program by calling it on every base and plus input and comparing with the
canonical solution's output (with EvalPlus's special oracles and float tolerances). The expected
outputs are computed once per problem by running the canonical solution in the sandbox too, then
cached under ``$DLLM_RL_CACHE/evalplus``. The comparison runs in the trusted harness; EvalPlus's own
executor (``exec`` in a forked process behind a monkeypatched-builtins guard) is not used.

Data: ``task.data_path``, else EvalPlus's own loader (its ``HUMANEVAL_OVERRIDE_PATH`` /
``MBPP_OVERRIDE_PATH`` file, else its cache, else a download from its GitHub release). The download is
tried only after a quick probe of the release URL, so that offline it is one line naming the fix."""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dllm_rl.errors import UsageError
from dllm_rl.hub_data import unreachable
from dllm_rl.results import atomic_write_text
from dllm_rl.sandbox import Job, Limits, _wire
from dllm_rl.task import Example

from .code_data import cache_root, require
from .code_task import CodeTask, CodeTaskConfig

# Trusted code run in the harness: compare one output with the expected one the way EvalPlus does.
COMPARE = '''
def _close(out, exp, atol):
    """numpy.allclose(out, exp, rtol=1e-07, atol=atol) for numbers and (nested) sequences of numbers."""
    if isinstance(exp, (list, tuple)):
        return isinstance(out, (list, tuple)) and len(out) == len(exp) and all(_close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(out, (bool, int, float)) and isinstance(exp, (bool, int, float)):
        return out == exp or abs(out - exp) <= atol + 1e-07 * abs(exp)
    return False


def _is_floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x))


def _check(i):
    spec = _DATA
    inp, exp, atol, name = spec["inputs"][i], spec["expected"][i], spec["atol"], spec["entry_point"]
    out = candidate(*inp)
    if spec["dataset"] == "humaneval" and name == "find_zero":
        assert abs(_poly(*inp, out)) <= atol
        return
    exact = out == exp
    if spec["dataset"] == "mbpp":
        if name == "are_equivalent":
            exact = True
        elif name == "sum_div":
            exact = exact or out == 0
        elif name == "surface_Area":
            exact = exact or abs(out - _surface_Area(*inp)) <= atol
        elif name == "digit_distance_nums":
            exact = exact or out == _digit_distance_nums(*inp)
        elif name in MBPP_OUTPUT_SET_EQ_TASKS:
            exact = set(out) == set(exp)
        elif name in MBPP_OUTPUT_NOT_NONE_TASKS:
            exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        assert type(out) == type(exp)
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
        assert _close(out, exp, atol)
    else:
        assert exact is True
'''

TRUTH = '''
def _truth(i):
    out = candidate(*_DATA["inputs"][i])
    return (out is not None) if _DATA["not_none"] else out
'''


def special_oracles() -> str:
    """EvalPlus's special-oracle module (its lists of set-equality / not-None tasks and oracle
    functions), as source for the harness: it is data about the benchmark, read from the package."""
    module = require("evalplus.eval._special_oracle")
    return inspect.getsource(module)


def not_none_tasks() -> list[str]:
    return list(require("evalplus.eval._special_oracle").MBPP_OUTPUT_NOT_NONE_TASKS)


def inputs_of(example: dict) -> list:
    return list(example["base_input"]) + list(example["plus_input"])


def time_limits(seconds: list[float], min_time: float, factor: float) -> list[float]:
    """EvalPlus's per-input budgets: max(min_time, factor * the canonical solution's time)."""
    return [max(min_time, factor * (s or 0.0)) for s in seconds]


class Release(NamedTuple):
    """Where EvalPlus's loader for one benchmark lives and what it reads."""

    task: str
    title: str
    module: str
    override: str
    """The environment variable EvalPlus reads (when imported) for a local copy of the data file."""
    version: str
    """The loader module's constant naming the release version it downloads."""
    name: str
    loader: str


RELEASES = {
    "humaneval": Release(task="humaneval-plus", title="HumanEval+", module="evalplus.data.humaneval",
                         override="HUMANEVAL_OVERRIDE_PATH", version="HUMANEVAL_PLUS_VERSION", name="HumanEvalPlus",
                         loader="get_human_eval_plus"),
    "mbpp": Release(task="mbpp-plus", title="MBPP+", module="evalplus.data.mbpp", override="MBPP_OVERRIDE_PATH",
                    version="MBPP_PLUS_VERSION", name="MbppPlus", loader="get_mbpp_plus"),
}
"""Keyed by ``EvalPlusTask.dataset``."""


@functools.lru_cache(maxsize=None)
def _release_unreachable(url: str) -> str | None:
    """Why EvalPlus's release URL cannot be reached (None: it can), probed once a process."""
    return unreachable(url)


def published_problems(dataset: str) -> dict[str, dict]:
    """EvalPlus's problems from its own loader, or one line naming ``task.data_path`` and its override
    variable when the data is neither local nor cached and the release cannot be downloaded (urllib would
    otherwise print a traceback, or hang without a timeout)."""
    r = RELEASES[dataset]
    module = require(r.module)
    url, cached = require("evalplus.data.utils").get_dataset_metadata(r.name, getattr(module, r.version), False)
    fix = f"download {url} once and pass --set task.data_path=FILE (or set {r.override}=FILE)"
    if not getattr(module, r.override) and not os.path.exists(cached):
        reason = _release_unreachable(url)
        if reason is not None:
            raise UsageError(f"task {r.task!r} needs EvalPlus's {r.title} data, which is not in its cache ({cached}), "
                             f"and its release cannot be downloaded ({reason}); {fix}")
    try:
        return getattr(module, r.loader)()
    except OSError as exc:  # the download failed after all, or the override file is missing
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"task {r.task!r} cannot load EvalPlus's {r.title} data ({reason}); {fix}") from None


@dataclass
class EvalPlusConfig(CodeTaskConfig):
    timeout: float = 60.0
    """Cap on a program's total seconds (EvalPlus: 60)."""
    min_time_limit: float = 1.0
    gt_time_limit_factor: float = 4.0
    """Per-input budget: max(min_time_limit, factor * the canonical solution's time), as EvalPlus."""


class EvalPlusTask(CodeTask):
    """Base of HumanEval+ and MBPP+: pass@1 = every base and plus input right; also base-input pass@1."""

    Config = EvalPlusConfig
    config: EvalPlusConfig
    splits = ("test",)
    dataset = ""
    """EvalPlus's dataset name ("humaneval" or "mbpp"): selects its special oracles."""

    def __init__(self, config: EvalPlusConfig | None = None):
        super().__init__(config)
        self._truth: dict[str, tuple[list, list[float]]] = {}

    # -- expected outputs ---------------------------------------------------------------------------
    def _cache_path(self, example: Example) -> Path:
        key = json.dumps([self.dataset, example["id"], example["prompt"] + example["canonical_solution"],
                          _wire.encode(inputs_of(example))], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return cache_root() / "evalplus" / f"{self.dataset}-{example['id'].replace('/', '_')}-{digest}.json"

    def _truth_job(self, example: Example) -> tuple[Job, Limits]:
        inputs = inputs_of(example)
        not_none = self.dataset == "mbpp" and example["entry_point"] in not_none_tasks()
        job = Job(example["prompt"] + example["canonical_solution"], setup=TRUTH,
                  bind={"candidate": example["entry_point"]}, data={"inputs": inputs, "not_none": not_none},
                  outputs=[f"_truth({i})" for i in range(len(inputs))])
        limits = Limits(timeout=max(120.0, 2.0 * len(inputs)), test_timeout=30.0, memory_mb=max(2048, self.config.memory_mb))
        return job, limits

    def prepare(self, examples: list[Example]) -> None:
        """Expected outputs of the canonical solutions: from the cache, else computed in parallel."""
        missing = []
        for ex in examples:
            if ex["id"] in self._truth:
                continue
            path = self._cache_path(ex)
            if path.is_file():
                data = json.loads(path.read_text())
                self._truth[ex["id"]] = (_wire.decode(data["expected"]), data["seconds"])
            elif all(m["id"] != ex["id"] for m in missing):
                missing.append(ex)
        if not missing:
            return
        jobs, limits = zip(*(self._truth_job(ex) for ex in missing))
        for ex, verdict in zip(missing, self.sandbox.map(list(jobs), list(limits))):
            failed = [i for i, ok in enumerate(verdict.output_ok) if not ok]
            if verdict.status != "ok" or failed:
                raise RuntimeError(f"the canonical solution of {ex['id']} failed on inputs {failed[:5]} "
                                   f"({verdict.status}: {verdict.error[:200]})")
            path = self._cache_path(ex)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"expected": _wire.encode(verdict.outputs), "seconds": verdict.seconds}))
            self._truth[ex["id"]] = (verdict.outputs, verdict.seconds)

    def truth(self, example: Example) -> tuple[list, list[float]]:
        self.prepare([example])
        return self._truth[example["id"]]

    # -- jobs and metrics ---------------------------------------------------------------------------
    def job(self, example: Example, program: str) -> Job:
        """Tests ``_check(i)`` over base then plus inputs, stopping at the first failure (pass@1)."""
        expected, seconds = self.truth(example)
        inputs = inputs_of(example)
        data = {"inputs": inputs, "expected": expected, "atol": float(example.get("atol") or 0),
                "entry_point": example["entry_point"], "dataset": self.dataset}
        c = self.config
        return Job(program, tests=[f"_check({i})" for i in range(len(inputs))], setup=special_oracles() + COMPARE,
                   bind={"candidate": example["entry_point"]}, data=data, fail_fast=True,
                   test_timeouts=time_limits(seconds, c.min_time_limit, c.gt_time_limit_factor))

    def limits(self, example: Example) -> Limits:
        c = self.config
        _, seconds = self.truth(example)
        budget = sum(time_limits(seconds, c.min_time_limit, c.gt_time_limit_factor))
        return Limits(timeout=min(c.timeout, budget) + 1.0, test_timeout=c.test_timeout, memory_mb=c.memory_mb)

    def metrics(self, example: Example, passed: list[bool] | None) -> dict[str, float]:
        passed = passed or []
        n_base = len(example["base_input"])
        return {"pass@1": float(bool(passed) and all(passed)),
                "base_pass@1": float(bool(passed) and all(passed[:n_base]))}

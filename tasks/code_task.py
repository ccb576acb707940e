"""Shared base of the code tasks: sandboxed test execution, the reward, the metrics and caching.

Every completion becomes a program (``program``) and a sandbox job with the task's trusted tests
(``job``); nothing the model wrote ever runs in this process. Reward (DiffuCoder's recipe, which
ESPO follows for code): ``pass_weight * fraction of tests passed + format_weight * format``, where
format is DiffuCoder's code-format score (see ``format_score``). Metric:
pass@1 (all tests pass, greedy) and the mean fraction of tests passed."""
from __future__ import annotations

import abc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from dllm_rl.errors import UsageError
from dllm_rl.sandbox import Job, Limits, RootRefused, Sandbox, WeakIsolation
from dllm_rl.task import EvalProtocol, Example, Task, TaskConfig, check_style

from .code_extract import PYTHON_TAGS, fenced_blocks, normalize, parses

CACHE_SIZE = 4096


def checked_sandbox(workers: int | None, allow_weak_isolation: bool) -> Sandbox:
    """A sandbox whose isolation is checked now: a host that cannot contain programs (or a root caller
    the sandbox refuses) is one line naming the task option, before any program runs."""
    sandbox = Sandbox(workers=workers or None, allow_weak_isolation=allow_weak_isolation)
    try:
        sandbox.isolation
    except WeakIsolation as exc:
        raise UsageError(f"{exc} (task option: --set task.allow_weak_isolation=true)") from None
    except RootRefused as exc:
        raise UsageError(str(exc)) from None
    return sandbox


@dataclass
class CodeTaskConfig(TaskConfig):
    """Data location, sandbox limits and reward weights shared by all code tasks."""

    data_path: str | None = None
    """Local copy of the data (offline use); None = the task's default source."""
    timeout: float = 10.0
    """Wall-clock seconds per program (start, load and all its tests)."""
    test_timeout: float = 5.0
    memory_mb: int = 1024
    workers: int = 0
    """Programs tested in parallel; 0 = one per CPU core."""
    pass_weight: float = 2.0
    format_weight: float = 0.5
    """DiffuCoder's code and code-format reward weights (coupled-GRPO code recipe)."""
    allow_weak_isolation: bool = False
    """Run even where programs could signal other processes of this user (no pid namespace or Landlock >= 6)."""

    def __post_init__(self):
        if self.timeout <= 0 or self.test_timeout <= 0 or self.memory_mb < 64 or self.workers < 0:
            raise ValueError("need timeout > 0, test_timeout > 0, memory_mb >= 64 and workers >= 0")
        if self.data_path is not None and not os.path.exists(os.path.expanduser(self.data_path)):
            raise ValueError(f"data_path {self.data_path!r} does not exist")


class CodeTask(Task):
    """A task whose answers are programs judged by running trusted tests in the sandbox."""

    Config = CodeTaskConfig
    config: CodeTaskConfig
    lengths: tuple[int, ...] = (256, 128, 512)
    shots: int = 0

    def __init__(self, config: CodeTaskConfig | None = None):
        super().__init__(config)
        self._sandbox: Sandbox | None = None
        self._verdicts: OrderedDict[tuple[str, str], list[bool]] = OrderedDict()
        self._lock = threading.Lock()

    # -- what each code task supplies -------------------------------------------------------------
    @abc.abstractmethod
    def program(self, example: Example, completion: str, style: str) -> str | None:
        """The program to test for a completion, or None if it contains no parseable code."""

    @abc.abstractmethod
    def job(self, example: Example, program: str) -> Job:
        """A sandbox job running the example's trusted tests against ``program``."""

    def prepare(self, examples: list[Example]) -> None:
        """Hook run before the jobs of ``examples`` are built (EvalPlus tasks compute expected outputs)."""

    def limits(self, example: Example) -> Limits:
        """Limits of the jobs of ``example`` (the config's; plus tasks scale them per problem)."""
        c = self.config
        return Limits(timeout=c.timeout, test_timeout=c.test_timeout, memory_mb=c.memory_mb)

    # -- execution ----------------------------------------------------------------------------------
    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = checked_sandbox(self.config.workers, self.config.allow_weak_isolation)
        return self._sandbox

    def test_results(self, examples: list[Example], programs: list[str | None]) -> list[list[bool] | None]:
        """Per-test pass flags of each program (None = no program), run in parallel and cached."""
        out: list[list[bool] | None] = [None] * len(programs)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (ex, prog) in enumerate(zip(examples, programs)):
            if prog is None:
                continue
            key = (ex["id"], prog)
            with self._lock:
                hit = self._verdicts.get(key)
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            keys = list(todo)
            self.prepare([examples[todo[k][0]] for k in keys])
            jobs = [self.job(examples[todo[k][0]], k[1]) for k in keys]
            limits = [self.limits(examples[todo[k][0]]) for k in keys]
            verdicts = self.sandbox.map(jobs, limits)
            with self._lock:
                for key, verdict in zip(keys, verdicts):
                    self._verdicts[key] = verdict.passed
                    while len(self._verdicts) > CACHE_SIZE:
                        self._verdicts.popitem(last=False)
            for key, verdict in zip(keys, verdicts):
                for i in todo[key]:
                    out[i] = verdict.passed
        return out

    # -- reward and metrics --------------------------------------------------------------------------
    def direct_code(self, example: Example, completion: str) -> str:
        """The text a direct-style completion must make parse (default: the completion itself)."""
        return completion

    def format_score(self, example: Example, completion: str, style: str) -> float:
        """Chat: 1 for a fenced Python block that parses, 0.5 for fenced blocks that do not, else 0
        (DiffuCoder's code-format reward). Direct: 1 if the completion parses in context, 0.5 if not,
        0 if it is blank."""
        text = normalize(completion)
        if not text.strip():
            return 0.0
        if style == "chat":
            blocks = [body for tag, body in fenced_blocks(text) if tag in PYTHON_TAGS and body.strip()]
            if not blocks:
                return 0.0
            return 1.0 if any(parses(b) for b in blocks) else 0.5
        return 1.0 if parses(self.direct_code(example, text)) else 0.5

    def rewards(self, examples: list[Example], completions: list[str], style: str) -> list[float]:
        check_style(style)
        c = self.config
        programs = [self.program(ex, text, style) for ex, text in zip(examples, completions)]
        results = self.test_results(examples, programs)
        out = []
        for ex, text, passed in zip(examples, completions, results):
            rate = sum(passed) / len(passed) if passed else 0.0
            out.append(c.pass_weight * rate + c.format_weight * self.format_score(ex, text, style))
        return out

    def reward(self, example: Example, completion: str, style: str) -> float:
        return self.rewards([example], [completion], style)[0]

    def scores(self, examples: list[Example], completions: list[str], style: str) -> list[dict[str, float]]:
        check_style(style)
        programs = [self.program(ex, text, style) for ex, text in zip(examples, completions)]
        results = self.test_results(examples, programs)
        return [self.metrics(ex, passed) for ex, passed in zip(examples, results)]

    def metrics(self, example: Example, passed: list[bool] | None) -> dict[str, float]:
        passed = passed or []
        return {"pass@1": float(bool(passed) and all(passed)),
                "test_pass_rate": sum(passed) / len(passed) if passed else 0.0}

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        return self.scores([example], [completion], style)[0]

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        return EvalProtocol(lengths=self.lengths, primary_metric="pass@1", split=self.eval_split, shots=self.shots)

    eval_split: str = "test"

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            name = type(self).__name__
            hint = "; train on acecoder (the paper's code recipe) and evaluate here" if split == "train" else ""
            raise UsageError(f"{name} has no {split!r} split; valid: {', '.join(self.splits)}{hint}")

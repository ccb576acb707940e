"""Rewards of the data task (``--task data:PATH``), chosen by name or by import path.

Built-ins read the answer region of a completion (direct style: all of it; chat style: the last
``<answer>`` block, else all of it): ``exact_match``, ``numeric_match``, ``math_verify`` (math-verify
in worker processes, several at once), ``regex`` and ``code`` (the example's tests in the sandbox,
several programs at once). Any other reward is a function ``module:function`` or
``path/to/file.py:function`` taking ``(example, completion)`` and returning a number; an exception it
raises becomes one line naming the example and the function. Each reward records its import path and
the sha256 of its source file, so results say which code scored them."""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dllm_rl.errors import UsageError
from dllm_rl.task import Example, answer_region

if TYPE_CHECKING:
    from dllm_rl.sandbox import Sandbox

    from .data import DataConfig

Batch = Callable[[list[Example], list[str], str], list[float]]
"""Rewards of many (example, completion) pairs in one prompt style."""


@dataclass
class Reward:
    """A reward function and what results record of it."""

    spec: str
    """As configured: a built-in name, ``module:function`` or ``path/to/file.py:function``."""
    name: str
    """Its metric key: the built-in's name or the function's."""
    target: str
    """Where its code lives: ``module:function`` or ``file.py:function``."""
    sha256: str | None
    """Of the source file that defines it (None where there is none, e.g. a C function)."""
    description: str
    """What it computes, in a line (the protocol's parser line)."""
    needs_answer: bool
    """Every example must have a reference answer (checked when the task is built)."""
    batch: Batch

    def record(self) -> dict[str, Any]:
        return {"reward": self.spec, "name": self.name, "target": self.target, "sha256": self.sha256}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _per_example(fn: Callable[[Example, str, str], float]) -> Batch:
    return lambda examples, completions, style: [fn(ex, text, style) for ex, text in zip(examples, completions)]


# -- built-ins --------------------------------------------------------------------------------------

def exact_match(example: Example, completion: str, style: str) -> float:
    """1.0 if the answer region equals the reference answer, both stripped of surrounding whitespace."""
    return float(answer_region(completion, style).strip() == example["answer"].strip())


def numeric_match(example: Example, completion: str, style: str) -> float:
    """1.0 if the answer region's number equals the reference's, as exact fractions (``1,200.00`` = ``1200``)."""
    from .gsm8k import parse_number

    value = parse_number(answer_region(completion, style))
    return float(value is not None and value == parse_number(example["answer"]))


def math_verify_batch(workers: int) -> Batch:
    """math-verify equivalence of each answer region with its reference, ``workers`` verifications at
    once (each in a worker process with a wall-clock limit, as the math task runs it)."""
    from .hendrycks_math import is_equivalent

    def run(examples: list[Example], completions: list[str], style: str) -> list[float]:
        pairs = [(ex["answer"], answer_region(text, style)) for ex, text in zip(examples, completions)]
        if len(pairs) <= 1 or workers == 1:
            return [float(is_equivalent(*p)) for p in pairs]
        with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
            return [float(ok) for ok in pool.map(lambda p: is_equivalent(*p), pairs)]

    return run


def regex_reward(pattern: re.Pattern) -> Callable[[Example, str, str], float]:
    """Without a group: 1.0 if ``pattern`` occurs in the completion (a format check). With groups:
    1.0 if the first group of its last occurrence equals the reference answer (both stripped)."""
    def score(example: Example, completion: str, style: str) -> float:
        last = None
        for last in pattern.finditer(completion):
            pass
        if last is None:
            return 0.0
        if not pattern.groups:
            return 1.0
        found = last.group(1)
        return float(found is not None and found.strip() == example["answer"].strip())

    return score


def tests_of(example: Example, field: str) -> list[str]:
    """The example's tests: a list of snippets (each one test) or one snippet."""
    value = example.get(field)
    return [value] if isinstance(value, str) else list(value)


class CodeReward:
    """Fraction of the example's tests (field ``tests_field``) that the completion's program passes,
    run in the sandbox, never in this process; programs of a batch run in parallel."""

    def __init__(self, config: DataConfig):
        self.config = config
        self._sandbox: Sandbox | None = None

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox, its isolation checked (a host that cannot contain programs is one line)."""
        if self._sandbox is None:
            from .code_task import checked_sandbox

            self._sandbox = checked_sandbox(self.config.workers, self.config.allow_weak_isolation)
        return self._sandbox

    def __call__(self, examples: list[Example], completions: list[str], style: str) -> list[float]:
        from dllm_rl.sandbox import Job, Limits

        from .code_extract import extract_code

        programs = [extract_code(text) for text in completions]
        todo = [i for i, program in enumerate(programs) if program is not None]
        timeout = self.config.code_timeout
        jobs = [Job(programs[i], tests=tests_of(examples[i], self.config.tests_field)) for i in todo]
        verdicts = self.sandbox.map(jobs, [Limits(timeout=timeout, test_timeout=min(5.0, timeout))] * len(jobs)) if jobs else []
        out = [0.0] * len(completions)
        for i, verdict in zip(todo, verdicts):
            out[i] = verdict.pass_rate
        return out


def _builtin(name: str, config: DataConfig) -> Reward:
    here = f"{__name__}:"
    sha = file_sha256(__file__)
    if name == "exact_match":
        return Reward(name, name, here + "exact_match", sha, "the answer region equals the reference answer "
                      "(both stripped)", True, _per_example(exact_match))
    if name == "numeric_match":
        return Reward(name, name, here + "numeric_match", sha, "the answer region's number (the first '#### n', else "
                      "the last number, inside the last \\boxed{} if any) equals the reference's, exactly", True,
                      _per_example(numeric_match))
    if name == "math_verify":
        return Reward(name, name, here + "math_verify_batch", sha, "math-verify equivalence of the answer region's "
                      "last \\boxed{} (else all of it) with the reference (worker processes, incorrect on timeout)",
                      True, math_verify_batch(config.workers or os.cpu_count() or 1))
    if name == "regex":
        if not config.regex:
            raise UsageError("reward 'regex' needs a pattern: --set task.regex=PATTERN (see docs/data.md)")
        try:
            pattern = re.compile(config.regex)
        except re.error as exc:
            raise UsageError(f"task.regex={config.regex!r} is not a valid regular expression: {exc}") from None
        what = ("its first group (last occurrence) equals the reference answer" if pattern.groups
                else "it occurs in the completion")
        return Reward(name, name, here + "regex_reward", sha, f"regex {config.regex!r}: {what}", bool(pattern.groups),
                      _per_example(regex_reward(pattern)))
    code = CodeReward(config)
    code.sandbox  # a host that cannot contain programs fails now, before any model loads
    return Reward(name, name, f"{__name__}:CodeReward", sha, f"fraction of the tests in field {config.tests_field!r} "
                  "that the completion's program passes (sandboxed)", False, code)


BUILTINS = ("exact_match", "numeric_match", "math_verify", "regex", "code")


# -- functions by import path ------------------------------------------------------------------------

def _import_file(path: Path):
    """The module of a Python file, imported once per content (an edited file is imported afresh)."""
    digest = file_sha256(path)
    name = f"_dllm_rl_reward_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as when the file runs as a script: its neighbours import
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"reward file {str(path)!r} cannot be imported: {_first_line(exc)}") from None
    finally:
        sys.path.remove(folder)
    return module


def _import_module(name: str):
    """A module by dotted name, the working directory searched first (as ``python -m`` does)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise UsageError(f"reward module {name!r} cannot be imported: {_first_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def load_function(spec: str) -> tuple[Callable, str, str | None]:
    """``(function, target, sha256 of its source file)`` for ``module:function`` or ``file.py:function``."""
    location, _, attr = spec.rpartition(":")
    if not location or not attr:
        raise UsageError(f"reward {spec!r}: expected module:function or path/to/file.py:function")
    if location.endswith(".py"):
        path = Path(location).expanduser()
        if not path.is_file():
            raise UsageError(f"reward {spec!r}: file {location!r} does not exist")
        module, target = _import_file(path), f"{location}:{attr}"
    else:
        module, target = _import_module(location), spec
    fn: Any = module
    try:
        for part in attr.split("."):
            fn = getattr(fn, part)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UsageError(f"reward {spec!r}: {location} has no {attr!r} (its functions: {', '.join(names) or 'none'})") from None
    if not callable(fn):
        raise UsageError(f"reward {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    source = getattr(module, "__file__", None)
    return fn, target, file_sha256(source) if source and Path(source).is_file() else None


def _number(value: Any, target: str, example: Example) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise UsageError(f"reward {target} returned {value!r} on example {example['id']!r}; expected a finite number")
    return float(value)


def user_reward(spec: str) -> Reward:
    """A reward by import path; ``fn(example, completion)`` gets a copy of the example (its row's fields
    with ``id``, ``prompt`` and ``answer``) and the decoded completion."""
    fn, target, sha = load_function(spec)

    def score(example: Example, completion: str, style: str) -> float:
        try:
            value = fn(dict(example), completion)
        except Exception as exc:  # the user's code: one line naming the function and the example
            raise UsageError(f"reward {target} failed on example {example['id']!r}: {_first_line(exc)}") from None
        return _number(value, target, example)

    name = target.rpartition(":")[2].rpartition(".")[2]
    return Reward(spec, name, target, sha, f"{target} (example, completion)", False, _per_example(score))


def resolve(spec: str, config: DataConfig) -> Reward:
    """The reward ``spec`` names: a built-in name, else an import path."""
    if spec in BUILTINS:
        return _builtin(spec, config)
    if ":" not in spec:
        close = difflib.get_close_matches(spec, BUILTINS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown reward {spec!r}.{hint} Built-in: {', '.join(BUILTINS)}; "
                         "or a function as module:function or path/to/file.py:function")
    return user_reward(spec)

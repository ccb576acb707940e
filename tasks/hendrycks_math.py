"""MATH (Hendrycks et al., 2021): competition problems with a LaTeX final answer, judged by math-verify.

Evaluation on MATH-500 (``HuggingFaceH4/MATH-500``); training on the other 12,000 MATH problems
(``ankner/math-500`` train split, as d1 and ESPO); the validation split is held out from train.
The final answer is the last ``\\boxed{}`` (nested braces kept) of the answer block, compared with
math-verify's ``parse`` + ``verify`` (symbolic and numeric equivalence), never by string. Direct-style
completions are first cut at lm-eval's MATH stop sequence. math-verify runs in a worker process, so
that an answer whose evaluation never ends (``2^{2^{2^{2^{2^{100}}}}}``) is stopped on any thread.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass

from dllm_rl.answer_format import last_boxed
from dllm_rl.errors import UsageError
from dllm_rl.hub_data import load_rows, official_splits
from dllm_rl.task import EvalProtocol, Example, Prompt, Task, TaskConfig, answer_region, check_style, extract_answer, keyed_random

SYSTEM_PROMPT = ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")
"""d1's format instruction (also used by wd1 and ESPO)."""
MATH_INSTRUCTION = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
                    "Wrap the final answer in a \\boxed{}.")
"""d1's MATH instruction, between the format instruction and the problem."""
STOP_SEQUENCES = ("Problem:",)
"""lm-eval's ``until`` for hendrycks_math and minerva_math: a direct-style completion is cut at it."""
TIMEOUT_S: int | None = 5
"""math-verify's own limit per parse and per comparison, in seconds (its SIGALRM, which works in the
worker's main thread; None turns it off)."""
CALL_TIMEOUT_S = 20
"""Wall-clock limit of one verification; past it the worker is killed and the answer counts as incorrect."""
START_TIMEOUT_S = 120
"""Time a new worker may take to start (importing math-verify and sympy)."""
MEMORY_MB = 4096
"""Address-space limit of a worker: a huge intermediate number fails with MemoryError (incorrect)."""

# The worker: one JSON request per line on stdin ([gold, answer, math-verify timeout, CPU seconds]),
# "1" or "0" per line on stdout. Its own CPU-time limit, raised before each request, ends it if it is
# stuck in C code after its parent is gone.
_WORKER = r"""
import json, logging, resource, sys

def limit(kind, value):
    hard = resource.getrlimit(kind)[1]
    resource.setrlimit(kind, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))

limit(resource.RLIMIT_AS, int(sys.argv[1]) << 20)
from math_verify import parse, verify
logging.disable(logging.WARNING)
golds = {}
print("ready", flush=True)
for line in sys.stdin:
    gold, answer, timeout, cpu = json.loads(line)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    limit(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime + cpu) + 1)
    try:
        if gold not in golds:
            if len(golds) >= 8192:
                golds.clear()
            golds[gold] = parse(gold, parsing_timeout=timeout)
        target = parse(answer, parsing_timeout=timeout)
        ok = bool(golds[gold]) and bool(target) and bool(verify(golds[gold], target, timeout_seconds=timeout))
    except Exception:
        ok = False
    print("1" if ok else "0", flush=True)
"""


@dataclass
class MATHConfig(TaskConfig):
    """Where the data comes from and how much of the train split is held out for validation."""

    seed: int = 0
    test_hub_id: str = "HuggingFaceH4/MATH-500"
    train_hub_id: str = "ankner/math-500"
    data_path: str | None = None
    """Local copy instead of the hub: a folder (one file per split, a hub snapshot such as one of
    ankner/math-500, which holds both splits, or a save_to_disk folder), a path containing {split},
    or one file holding the test split."""
    validation_size: int = 200


def final_answer(text: str) -> str:
    """What math-verify should read: the last ``\\boxed{}`` re-boxed alone if there is one (math-verify
    would join several boxed answers into a set), else the whole text."""
    boxed = last_boxed(text)
    return text if boxed is None else f"\\boxed{{{boxed}}}"


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """``text`` up to the first stop sequence, as lm-eval truncates generations."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def is_equivalent(gold: str, text: str) -> bool:
    """Whether the final answer in ``text`` equals the gold LaTeX answer, by math-verify ``parse`` +
    ``verify`` in a worker process; False if that takes longer than ``CALL_TIMEOUT_S``."""
    request = json.dumps([final_answer(f"\\boxed{{{gold}}}"), final_answer(text), TIMEOUT_S, CALL_TIMEOUT_S]) + "\n"
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None or worker.poll() is not None:
        worker = _start_worker()
    try:
        worker.stdin.write(request)
        worker.stdin.flush()
        ready, _, _ = select.select([worker.stdout], [], [], CALL_TIMEOUT_S)
        reply = worker.stdout.readline().strip() if ready else None
    except (BrokenPipeError, OSError):
        reply = None
    if reply not in ("0", "1"):  # timed out or died: the answer is incorrect, the worker is not reused
        worker.kill()
        worker.wait()
        return False
    with _lock:
        _idle.append(worker)
    return reply == "1"


_idle: list[subprocess.Popen] = []
"""Workers waiting for a request; each caller takes one (or starts one), so threads verify in parallel."""
_lock = threading.Lock()


def _forget_workers() -> None:
    """In a forked child: its parent's workers and lock are not its own (shared pipes would mix replies)."""
    global _lock
    _idle.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)


def _start_worker() -> subprocess.Popen:
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(MEMORY_MB)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([worker.stdout], [], [], START_TIMEOUT_S)
    if not ready or worker.stdout.readline().strip() != "ready":
        worker.kill()
        worker.wait()
        import math_verify  # noqa: F401  (the import error, if that is why the worker did not start)

        raise RuntimeError(f"the math-verify worker process did not start within {START_TIMEOUT_S} s")
    return worker


class MATH(Task):
    """MATH-500 evaluation and MATH training with d1's prompt and reward (the broken ``\\boxed``
    check fixed) and math-verify equivalence."""

    Config = MATHConfig
    config: MATHConfig

    def __init__(self, config: MATHConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        c = self.config
        return official_splits(split, self._cache, self._load, self._examples, c.validation_size,
                               keyed_random(c.seed, "math", "validation"))

    def _load(self, split: str) -> list[dict]:
        c = self.config
        hub_id = c.test_hub_id if split == "test" else c.train_hub_id
        return load_rows(hub_id, split, task="math", data_path=c.data_path)

    @staticmethod
    def _examples(source: str, rows: list[dict], indices) -> list[Example]:
        out = []
        for i in indices:
            row = rows[i]
            if not {"problem", "solution"} <= row.keys():
                raise UsageError(f"math {source} row {i} lacks 'problem'/'solution' (has {', '.join(row)}); "
                                 "expected the MATH-500 schema")
            answer = row.get("answer") or last_boxed(row["solution"])
            if not answer:
                raise UsageError(f"math {source} row {i} has neither an 'answer' nor a \\boxed{{}} in its solution")
            uid = row.get("unique_id") or f"{source}-{i}"
            out.append({"id": f"math-{uid}", "problem": row["problem"], "solution": row["solution"],
                        "answer": answer, "subject": row.get("subject") or row.get("type") or "",
                        "level": str(row.get("level", ""))})
        return out

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        if style == "direct":
            return f"Problem: {example['problem']}\nSolution:"
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{MATH_INSTRUCTION}\n\n{example['problem']}"}]

    def correct(self, example: Example, completion: str, style: str) -> bool:
        """Whether the completion's final answer (direct style: cut at lm-eval's stop sequence) is the gold one."""
        check_style(style)
        text = cut_at_stop(completion) if style == "direct" else completion
        return is_equivalent(example["answer"], answer_region(text, style))

    def reward(self, example: Example, completion: str, style: str) -> float:
        """d1's reward in chat style (at most 3): 2 for an equivalent answer, plus half of (1 for an
        ``<answer>`` block + 1 if the answer text holds a ``\\boxed{}``, else 0.5); 1/0 in direct style."""
        check_style(style)
        correct = self.correct(example, completion, style)
        if style == "direct":
            return float(correct)
        tagged = extract_answer(completion, style)
        boxed = "\\boxed" in answer_region(completion, style)
        return 2.0 * correct + 0.5 * ((tagged is not None) + (1.0 if boxed else 0.5))

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        check_style(style)
        return {"accuracy": float(self.correct(example, completion, style))}

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        prompt = ("user turn: d1's <reasoning>/<answer> format instruction, d1's MATH instruction, problem"
                  if style == "chat" else "'Problem: <problem>\\nSolution:'")
        return EvalProtocol(lengths=(256, 128, 512), primary_metric="accuracy", split="test", shots=0, prompt=prompt,
                            parser=("direct: cut at lm-eval's MATH stop sequence 'Problem:'; last <answer> block "
                                    "(chat, else the whole completion); its last \\boxed{} (else all of it) parsed and "
                                    "verified against the gold answer by math-verify (in a worker process, incorrect "
                                    f"after {CALL_TIMEOUT_S} s)"))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if style == "direct":
            return f" {example['solution']}"
        return (f"<reasoning>\n{example['solution']}\n</reasoning>\n"
                f"<answer>\n\\boxed{{{example['answer']}}}\n</answer>")

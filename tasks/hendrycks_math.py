"""MATH (Hendrycks et al., 2021): competition problems with a LaTeX final answer, judged by math-verify.

Evaluation on MATH-500 (``HuggingFaceH4/MATH-500``); training on the other 12,000 MATH problems
(``ankner/math-500`` train split, as d1 and ESPO); the validation split is held out from train.
The final answer is the last ``\\boxed{}`` (nested braces kept) of the answer block, compared with
math-verify's ``parse`` + ``verify`` (symbolic and numeric equivalence), never by string.
"""
from __future__ import annotations

import functools
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
TIMEOUT_S = 5
"""math-verify's per-call time limit (a SIGALRM, so only in the main thread; elsewhere none)."""


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


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def final_answer(text: str) -> str:
    """What math-verify should read: the last ``\\boxed{}`` re-boxed alone if there is one (math-verify
    would join several boxed answers into a set), else the whole text."""
    boxed = last_boxed(text)
    return text if boxed is None else f"\\boxed{{{boxed}}}"


def parse_answer(text: str) -> list:
    """math-verify's parse of a final answer (an empty list when nothing parses)."""
    from math_verify import parse

    return parse(final_answer(text), parsing_timeout=_timeout())


def is_equivalent(gold: str, text: str) -> bool:
    """Whether the final answer in ``text`` equals the gold LaTeX answer, by math-verify."""
    from math_verify import verify

    target = parse_answer(text)
    if not target:
        return False
    return verify(list(_gold(gold)), target, timeout_seconds=_timeout())


@functools.lru_cache(maxsize=8192)
def _gold(answer: str) -> tuple:
    """Parsed gold answers, cached: every rollout of a prompt shares its gold."""
    return tuple(parse_answer(f"\\boxed{{{answer}}}"))


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
        return is_equivalent(example["answer"], answer_region(completion, style))

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
                            parser=("last <answer> block (else the whole completion); its last \\boxed{} (else all "
                                    "of it) parsed and verified against the gold answer by math-verify"))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if style == "direct":
            return f" {example['solution']}"
        return (f"<reasoning>\n{example['solution']}\n</reasoning>\n"
                f"<answer>\n\\boxed{{{example['answer']}}}\n</answer>")

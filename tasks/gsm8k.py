"""GSM8K: grade-school maths word problems with a numeric answer (Cobbe et al., 2021).

Data: ``openai/gsm8k`` (config ``main``) from the hub, or a local copy via ``data_path``. The test split
is the official 1319 problems; the validation split is held out from the official train split.
Answers are compared as exact numbers after extraction (commas, currency signs, units, trailing
periods, ``\\boxed{}`` and GSM8K's ``#### n`` layout handled), never as strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from dllm_rl.answer_format import last_boxed, soft_format, strict_format, xml_count
from dllm_rl.errors import UsageError
from dllm_rl.hub_data import load_rows, official_splits
from dllm_rl.task import EvalProtocol, Example, Prompt, Task, TaskConfig, answer_region, check_style, extract_answer, keyed_random

SYSTEM_PROMPT = ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")
"""d1's format instruction (also used by wd1 and ESPO), put before the question in the user turn."""

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?(?:/\d+)?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_INTEGER = re.compile(r"-?\d+")


@dataclass
class GSM8KConfig(TaskConfig):
    """Where the data comes from and how much of the train split is held out for validation."""

    seed: int = 0
    hub_id: str = "openai/gsm8k"
    hub_config: str = "main"
    data_path: str | None = None
    """Local copy instead of the hub: a folder (one file per split, a hub snapshot or a save_to_disk
    folder), a path containing {split}, or one file holding the test split."""
    validation_size: int = 200
    """Problems of the official train split held out as the validation split (checkpoint selection)."""


def parse_number(text: str | None) -> Fraction | None:
    """The final numeric answer in ``text``: after the last ``####`` if any, else inside the last
    ``\\boxed{}`` if any, else the last number; None if there is none."""
    if text is None:
        return None
    text = text.replace("\u2212", "-")  # unicode minus
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    else:
        boxed = last_boxed(text)
        if boxed is not None:
            text = boxed
    text = _FRAC.sub(r"\1/\2", text)
    for token in reversed(_NUMBER.findall(text)):
        try:
            return Fraction(token.replace(",", ""))
        except (ValueError, ZeroDivisionError):
            continue
    return None


class GSM8K(Task):
    """GSM8K with d1's prompt and reward (format bugs fixed) and exact numeric answer matching."""

    Config = GSM8KConfig
    config: GSM8KConfig

    def __init__(self, config: GSM8KConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        return official_splits(split, self._cache, self._load, self._examples, self.config.validation_size,
                               keyed_random(self.config.seed, "gsm8k", "validation"))

    def _load(self, split: str) -> list[dict]:
        c = self.config
        return load_rows(c.hub_id, split, task="gsm8k", config=c.hub_config, data_path=c.data_path)

    @staticmethod
    def _examples(source: str, rows: list[dict], indices) -> list[Example]:
        """Examples keyed by their index in the official split, so ids survive the validation hold-out."""
        out = []
        for i in indices:
            row = rows[i]
            if not {"question", "answer"} <= row.keys():
                raise UsageError(f"gsm8k {source} row {i} lacks 'question'/'answer' (has {', '.join(row)}); expected the openai/gsm8k schema")
            if "####" not in row["answer"] or parse_number(row["answer"]) is None:
                raise UsageError(f"gsm8k {source} row {i}: the answer has no '#### <number>' line")
            reasoning, answer = row["answer"].rsplit("####", 1)
            out.append({"id": f"gsm8k-{source}-{i}", "question": row["question"],
                        "reasoning": _CALCULATOR.sub("", reasoning).strip(), "answer": answer.strip()})
        return out

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        if style == "direct":
            return f"Question: {example['question']}\nAnswer:"
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{example['question']}"}]

    def correct(self, example: Example, completion: str, style: str) -> bool:
        value = parse_number(answer_region(completion, style))
        return value is not None and value == parse_number(example["answer"])

    def reward(self, example: Example, completion: str, style: str) -> float:
        """d1's reward in chat style (at most 4): 2 for the right number, 0.5 for a plain integer
        answer, 0.5 strict and 0.5 soft format, up to 0.5 for the tags; 1/0 correctness in direct style."""
        check_style(style)
        correct = self.correct(example, completion, style)
        if style == "direct":
            return float(correct)
        tagged = extract_answer(completion, style)
        integer = tagged is not None and _INTEGER.fullmatch(tagged.strip()) is not None
        return (2.0 * correct + 0.5 * integer + 0.5 * strict_format(completion) + 0.5 * soft_format(completion)
                + xml_count(completion))

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        check_style(style)
        scores = {"accuracy": float(self.correct(example, completion, style))}
        if style == "chat":
            scores["format"] = float(soft_format(completion))
        return scores

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        prompt = ("user turn: d1's <reasoning>/<answer> format instruction, blank line, question" if style == "chat"
                  else "'Question: <question>\nAnswer:'")
        return EvalProtocol(lengths=(256, 128, 512), primary_metric="accuracy", split="test", shots=0, prompt=prompt,
                            parser=("last <answer> block (else the whole completion); after '####', else in the last "
                                    "\\boxed{}, else the last number; commas, $ and units dropped; exact numeric match"))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if style == "direct":
            return f" {example['reasoning']}\n#### {example['answer']}"
        return f"<reasoning>\n{example['reasoning']}\n</reasoning>\n<answer>\n{example['answer']}\n</answer>"

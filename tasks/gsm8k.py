"""GSM8K: grade-school maths word problems with a numeric answer (Cobbe et al., 2021).

Data: ``openai/gsm8k`` (config ``main``) from the hub, or a local copy via ``data_path``. The test split
is the official 1319 problems; the validation split is held out from the official train split.
Numbers are read with lm-eval's ``gsm8k`` filters and normalisation (its regexes, verbatim); direct-style
completions are first cut at its stop sequences. Metrics:

- ``accuracy``: lm-eval's "strict-match" number (the first ``#### n``) if there is one, else its
  "flexible-extract" number (the last number), read inside the last ``\\boxed{}`` if there is one; read
  from the last ``<answer>`` block in chat style; compared as exact numbers (``1,200.00`` = ``1200``).
- ``strict_match`` / ``flexible_extract`` (direct style): lm-eval's filters of those names with its
  ``exact_match`` (normalised strings), on the whole cut completion, i.e. lm-eval's two gsm8k scores.
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

# lm-eval's gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml, lm-eval 0.4), verbatim; the tests compare them
# with the installed lm-eval.
STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
"""Its ``generation_kwargs.until``: a direct-style completion is cut at the first of them."""
STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")
"""Its "strict-match" filter (first match)."""
FLEXIBLE_EXTRACT = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
"""Its "flexible-extract" filter (``group_select: -1``, the last match)."""
IGNORED = (",", "\\$", "(?s).*#### ", "\\.$")
"""Its ``exact_match`` ``regexes_to_ignore``, removed in order (then ``ignore_case``)."""
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


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """``text`` up to the first stop sequence, as lm-eval (and the lm-eval adapter) truncate generations."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def strict_match(text: str) -> str | None:
    """lm-eval's "strict-match" pick: the number of the first ``#### n`` (None where lm-eval says "[invalid]")."""
    m = STRICT_MATCH.search(text)
    return m.group(1).strip() if m else None


def flexible_extract(text: str) -> str | None:
    """lm-eval's "flexible-extract" pick: the last number-like match (None where lm-eval says "[invalid]")."""
    matches = FLEXIBLE_EXTRACT.findall(text)
    if not matches:
        return None
    picked = [group for group in matches[-1] if group]
    return picked[0].strip() if picked else None


def normalise(text: str) -> str:
    """lm-eval's ``exact_match`` normalisation of gsm8k: its ignored regexes removed in order, lower case."""
    for pattern in IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def to_number(pick: str | None) -> Fraction | None:
    """An extracted pick as an exact number after lm-eval's normalisation; None if it is no number."""
    if pick is None:
        return None
    try:
        return Fraction(normalise(pick))
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(text: str | None) -> Fraction | None:
    """The final numeric answer in ``text``: lm-eval's strict-match number if any, else its
    flexible-extract number inside the last ``\\boxed{}`` (else in the whole text); None if none reads."""
    if text is None:
        return None
    text = text.replace("\u2212", "-")  # unicode minus, which lm-eval's regexes do not read
    value = to_number(strict_match(text))
    if value is None:
        boxed = last_boxed(text)
        value = to_number(flexible_extract(text if boxed is None else boxed))
    return value


def lm_eval_scores(completion: str, gold: str) -> dict[str, float]:
    """lm-eval's gsm8k scores of a completion: each filter's pick (or "[invalid]") against the gold answer,
    both normalised, as strings."""
    text = cut_at_stop(completion)
    target = normalise(gold)
    return {name: float(normalise(pick(text) or "[invalid]") == target)
            for name, pick in (("strict_match", strict_match), ("flexible_extract", flexible_extract))}


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
        """Whether the completion's number (direct style: cut at lm-eval's stop sequences) is the gold number."""
        check_style(style)
        text = cut_at_stop(completion) if style == "direct" else completion
        value = parse_number(answer_region(text, style))
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
        else:
            scores.update(lm_eval_scores(completion, example["answer"]))
        return scores

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        prompt = ("user turn: d1's <reasoning>/<answer> format instruction, blank line, question" if style == "chat"
                  else "'Question: <question>\nAnswer:'")
        return EvalProtocol(lengths=(256, 128, 512), primary_metric="accuracy", split="test", shots=0, prompt=prompt,
                            parser=("direct: cut at lm-eval's gsm8k stop sequences; last <answer> block (chat, else the "
                                    "whole completion); lm-eval's strict-match number (first '#### n'), else its "
                                    "flexible-extract number (last one) in the last \\boxed{} or the text; lm-eval's "
                                    "normalisation (',' '$' trailing '.'); exact numeric match"))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if style == "direct":
            return f" {example['reasoning']}\n#### {example['answer']}"
        return f"<reasoning>\n{example['reasoning']}\n</reasoning>\n<answer>\n{example['answer']}\n</answer>"

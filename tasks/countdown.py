"""Countdown: combine the given numbers, each exactly once, with + - * / to reach a target.

Answers are checked with a whitelisting ``ast`` evaluator over exact fractions; the public d1 code
calls Python ``eval()`` on model output, which this module never does.
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from dllm_rl.errors import UsageError
from dllm_rl.task import EvalProtocol, Example, Prompt, Task, TaskConfig, check_style, extract_answer, keyed_random

MAX_EXPRESSION_CHARS = 100
MAX_LITERAL_DIGITS = 6
MAX_MISSES = 200_000
"""Draws in a row that find no new problem before a split is declared impossible."""

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_TRAILING_RESULT = re.compile(r"=\s*-?[0-9]+(?:\.[0-9]+)?\s*$")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class InvalidExpression(ValueError):
    """Text that is not an allowed arithmetic expression, or that divides by zero."""


@dataclass
class CountdownConfig(TaskConfig):
    """Ranges of the generated numbers and targets, split sizes, and the operators the generator uses."""

    seed: int = 0
    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 99
    min_target: int = 1
    max_target: int = 999
    train_size: int = 20000
    validation_size: int = 200
    test_size: int = 500
    ops: str = "+-*/"
    reward: str = "d1"
    """``d1``: 1.0 for a right equation, 0.1 for any other answer, 0.0 without one; ``solved``: 1.0 only
    for a right equation (the accuracy metric itself)."""

    def __post_init__(self):
        if self.num_numbers < 1 or self.min_number > self.max_number or self.min_target > self.max_target:
            raise ValueError("need num_numbers >= 1, min_number <= max_number and min_target <= max_target")
        if not self.ops or set(self.ops) - set(_PRECEDENCE):
            raise ValueError(f"ops must be a non-empty subset of '+-*/', got {self.ops!r}")
        if self.reward not in ("d1", "solved"):
            raise ValueError(f"reward must be d1 or solved, got {self.reward!r}")


def _parse(text: str) -> ast.expr:
    """The body of ``text`` parsed as a Python expression, after the cheap length and character checks."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise InvalidExpression(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        raise InvalidExpression("only digits, + - * / ( ) and spaces are allowed")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError) as e:
        raise InvalidExpression(f"not an expression: {e}") from None


def _walk(node: ast.expr, literals: list[int]) -> Fraction:
    """Evaluate an allowed node exactly, appending its integer literals to ``literals``; reject anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value >= 10**MAX_LITERAL_DIGITS:
            raise InvalidExpression(f"integer literal with more than {MAX_LITERAL_DIGITS} digits")
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand, literals)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _walk(node.left, literals), _walk(node.right, literals)
        return _apply(_BINOPS[type(node.op)], left, right)
    raise InvalidExpression(f"{type(node).__name__} is not allowed")


def _apply(op: str, left: Fraction, right: Fraction) -> Fraction:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0:
        raise InvalidExpression("division by zero")
    return left / right


def evaluate_expression(text: str) -> Fraction:
    """Exact value of an arithmetic expression of integers, + - * /, unary minus and parentheses."""
    return _walk(_parse(text), [])


def numbers_used(text: str) -> list[int]:
    """The integer literals of an allowed expression, left to right (raises ``InvalidExpression`` otherwise)."""
    literals: list[int] = []
    _walk(_parse(text), literals)
    return literals




def _random_expression(rng: random.Random, numbers: list[int], ops: str) -> tuple[Fraction, str, int]:
    """A random expression over ``numbers`` in the given order: (value, text, precedence of the top operator)."""
    if len(numbers) == 1:
        return Fraction(numbers[0]), str(numbers[0]), 3
    k = rng.randint(1, len(numbers) - 1)
    op = rng.choice(ops)
    left_value, left, left_prec = _random_expression(rng, numbers[:k], ops)
    right_value, right, right_prec = _random_expression(rng, numbers[k:], ops)
    prec = _PRECEDENCE[op]
    if left_prec < prec:
        left = f"({left})"
    if right_prec < prec or (right_prec == prec and op in "-/"):
        right = f"({right})"
    return _apply(op, left_value, right_value), f"{left}{op}{right}", prec


def verdict(example: Example, text: str | None) -> str:
    """How an answer fares: ``solved``, ``no_expression``, ``wrong_numbers`` (not exactly the given numbers,
    each once) or ``wrong_value`` (right numbers, another value)."""
    try:
        literals: list[int] = []
        value = _walk(_parse(text or ""), literals)
    except InvalidExpression:
        return "no_expression"
    if sorted(literals) != sorted(example["numbers"]):
        return "wrong_numbers"
    return "solved" if value == example["target"] else "wrong_value"


class Countdown(Task):
    """Countdown with generated problems; splits are disjoint by (sorted numbers, target)."""

    Config = CountdownConfig
    config: CountdownConfig

    def __init__(self, config: CountdownConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}
        self._used: set[tuple[tuple[int, ...], int]] = set()

    def examples(self, split: str) -> list[Example]:
        """Generated in the order test, validation, train; each split skips the keys of the ones before."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        for name in ("test", "validation", "train"):
            if split in self._cache:
                break
            if name not in self._cache:
                self._cache[name] = self._generate(name)
        return list(self._cache[split])

    def _generate(self, split: str) -> list[Example]:
        """``<split>_size`` problems whose keys (sorted numbers, target) are not yet used by an earlier split."""
        cfg = self.config
        size = getattr(cfg, f"{split}_size")
        rng = keyed_random(cfg.seed, split)
        out: list[Example] = []
        misses = 0
        while len(out) < size:
            if misses > MAX_MISSES:
                raise UsageError(
                    f"task.{split}_size={size} is more than this countdown config can make (only {len(out)} {split} "
                    f"problems left after the earlier splits); lower task.{split}_size or widen task.max_number / "
                    "task.max_target"
                )
            misses += 1
            numbers = [rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.num_numbers)]
            order = rng.sample(numbers, len(numbers))
            try:
                value, solution, _ = _random_expression(rng, order, cfg.ops)
            except InvalidExpression:
                continue
            if value.denominator != 1 or not cfg.min_target <= value <= cfg.max_target:
                continue
            key = (tuple(sorted(numbers)), int(value))
            if key in self._used:
                continue
            self._used.add(key)
            misses = 0
            example_id = f"countdown-{split}-{len(out)}"
            out.append({"id": example_id, "numbers": numbers, "target": int(value), "solution": solution})
        return out

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        numbers, target = example["numbers"], example["target"]
        if style == "direct":
            return f"{' '.join(map(str, numbers))}>{target}="
        ops = ", ".join(self.config.ops)
        content = (
            f"Using the numbers {numbers}, create an equation that equals {target}. "
            f"You can use the arithmetic operations ({ops}) and parentheses, and each number must be used "
            "exactly once. Show your reasoning inside <reasoning> </reasoning> tags, then give only the final "
            "expression inside <answer> </answer> tags, for example <answer>(1 + 2) / 3</answer>."
        )
        return [{"role": "user", "content": content}]

    def answer(self, completion: str, style: str) -> str | None:
        """The expression: last ``<answer>`` block (chat) or whole completion (direct), minus a trailing "= n"."""
        text = extract_answer(completion, style)
        if text is None or (style == "direct" and not text.strip()):
            return None
        return _TRAILING_RESULT.sub("", text.strip()).strip()

    def reward(self, example: Example, completion: str, style: str) -> float:
        """d1's reward: 0.0 without an answer, 1.0 if it uses exactly the numbers and hits the target, else
        0.1 (``reward: solved``: 1.0 or 0.0)."""
        text = self.answer(completion, style)
        if verdict(example, text) == "solved":
            return 1.0
        return 0.1 if text is not None and self.config.reward == "d1" else 0.0

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        return {"accuracy": float(verdict(example, self.answer(completion, style)) == "solved")}

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        lengths = (16,) if style == "direct" else (256, 128, 512)
        return EvalProtocol(lengths=lengths, primary_metric="accuracy")

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        solution = example["solution"]
        if style == "direct":
            return solution
        reasoning = f"Combine {example['numbers']} using each number once: {solution} = {example['target']}."
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>{solution}</answer>"

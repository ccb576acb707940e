"""Countdown: combine the given numbers, each exactly once, with + - * / to reach a target.

Answers are checked with a whitelisting ``ast`` evaluator over exact fractions; the public d1 code
calls Python ``eval()`` on model output, which this module never does. The length and literal-size
limits that keep hostile answers cheap grow with the problem (how many numbers, how many digits), and a
config whose own reference answers the scorer cannot read is refused when the task is built.
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
"""The smallest limits of any problem (and those of ``evaluate_expression`` and ``numbers_used``)."""
LENGTH_SLACK = 4
"""An answer may be this many times as long as the problem's longest reference expression (every
operation parenthesised): room for spaces and redundant parentheses."""
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


@dataclass(frozen=True)
class Limits:
    """What the evaluator reads at most: characters of the answer and digits of one literal."""

    max_chars: int = MAX_EXPRESSION_CHARS
    max_digits: int = MAX_LITERAL_DIGITS


def limits_for(numbers: list[int]) -> Limits:
    """Limits for a problem with these numbers: the longest reference expression (each number at its
    widest, every operation parenthesised) times ``LENGTH_SLACK``, and the widest number's digits; never
    below the defaults. Values then stay below about ``max_chars`` digits, so evaluation stays cheap."""
    width = max(len(str(n)) for n in numbers)
    longest = len(numbers) * width + 3 * (len(numbers) - 1)
    return Limits(max(MAX_EXPRESSION_CHARS, LENGTH_SLACK * longest), max(MAX_LITERAL_DIGITS, width))


def _parse(text: str, limits: Limits) -> ast.expr:
    """The body of ``text`` parsed as a Python expression, after the cheap length and character checks."""
    if len(text) > limits.max_chars:
        raise InvalidExpression(f"expression longer than {limits.max_chars} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        raise InvalidExpression("only digits, + - * / ( ) and spaces are allowed")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # e.g. "too many nested parentheses"
        raise InvalidExpression(f"not an expression: {e}") from None


def _evaluate(text: str, limits: Limits, literals: list[int]) -> Fraction:
    """Exact value of ``text`` within ``limits``, appending its integer literals to ``literals`` left to right;
    the tree is walked with an explicit stack, so the caller's stack depth does not matter."""
    values: list[Fraction] = []
    stack: list[tuple[ast.expr, bool]] = [(_parse(text, limits), False)]
    while stack:
        node, operands_done = stack.pop()
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if node.value >= 10**limits.max_digits:
                raise InvalidExpression(f"integer literal with more than {limits.max_digits} digits")
            literals.append(node.value)
            values.append(Fraction(node.value))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            if operands_done:
                values.append(-values.pop())
            else:
                stack += [(node, True), (node.operand, False)]
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            if operands_done:
                right = values.pop()
                values.append(_apply(_BINOPS[type(node.op)], values.pop(), right))
            else:
                stack += [(node, True), (node.right, False), (node.left, False)]
        else:
            raise InvalidExpression(f"{type(node).__name__} is not allowed")
    return values[0]


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


def evaluate_expression(text: str, limits: Limits = Limits()) -> Fraction:
    """Exact value of an arithmetic expression of integers, + - * /, unary minus and parentheses."""
    return _evaluate(text, limits, [])


def numbers_used(text: str, limits: Limits = Limits()) -> list[int]:
    """The integer literals of an allowed expression, left to right (raises ``InvalidExpression`` otherwise)."""
    literals: list[int] = []
    _evaluate(text, limits, literals)
    return literals


def _random_expression(rng: random.Random, numbers: list[int], ops: str) -> tuple[Fraction, str, int]:
    """A random expression over ``numbers`` in the given order: (value, text, precedence of the top operator)."""
    return _expression(numbers, lambda size, depth: (rng.randint(1, size - 1), rng.choice(ops)))


def _deepest_expression(numbers: list[int], ops: str) -> tuple[Fraction, str, int]:
    """The generator's expression with the most nested parentheses: right-nested, with an operator whose
    right operand is always parenthesised (``-`` or ``/``), else ``*`` and ``+`` alternating."""
    nesting = [op for op in "-/" if op in ops]
    cycle = nesting[:1] or ([op for op in "*+" if op in ops] if set("*+") <= set(ops) else [ops[0]])
    return _expression(numbers, lambda size, depth: (1, cycle[depth % len(cycle)]))


def _expression(numbers: list[int], choose, depth: int = 0) -> tuple[Fraction, str, int]:
    """An expression over ``numbers`` in order, split and joined where ``choose(len, depth)`` says:
    (value, text with only the parentheses precedence needs, precedence of the top operator)."""
    if len(numbers) == 1:
        return Fraction(numbers[0]), str(numbers[0]), 3
    k, op = choose(len(numbers), depth)
    left_value, left, left_prec = _expression(numbers[:k], choose, depth + 1)
    right_value, right, right_prec = _expression(numbers[k:], choose, depth + 1)
    prec = _PRECEDENCE[op]
    if left_prec < prec:
        left = f"({left})"
    if right_prec < prec or (right_prec == prec and op in "-/"):
        right = f"({right})"
    return _apply(op, left_value, right_value), f"{left}{op}{right}", prec


def verdict(example: Example, text: str | None) -> str:
    """How an answer fares: ``solved``, ``no_expression``, ``wrong_numbers`` (not exactly the given numbers,
    each once) or ``wrong_value`` (right numbers, another value). Read within ``limits_for`` the problem's numbers."""
    try:
        literals: list[int] = []
        value = _evaluate(text or "", limits_for(example["numbers"]), literals)
    except InvalidExpression:
        return "no_expression"
    if sorted(literals) != sorted(example["numbers"]):
        return "wrong_numbers"
    return "solved" if value == example["target"] else "wrong_value"


def _check_scorer_reads_references(cfg: CountdownConfig) -> None:
    """Refuse a config whose own reference answers its scorer would not read: each end of the number
    range alone, then the generator's most nested expression of the widest number ``num_numbers`` times."""
    for key in ("min_number", "max_number"):
        n = getattr(cfg, key)
        result = verdict({"numbers": [n], "target": n}, str(n))
        if result != "solved":
            raise UsageError(f"task.{key}={n}: the reference answer {str(n)!r} scores as {result} (a leading '-' "
                             "is an operator, not part of a number); use numbers >= 0")
    widest = max(cfg.min_number, cfg.max_number, key=lambda n: len(str(n))) or 1  # 1: as wide as 0, no zero division
    numbers = [widest] * cfg.num_numbers
    try:
        value, text, _ = _deepest_expression(numbers, cfg.ops)
    except RecursionError:  # too deep even to build
        value, text = Fraction(0), ""
    result = verdict({"numbers": numbers, "target": value}, text) if text else "no_expression"
    if result != "solved":
        raise UsageError(f"task.num_numbers={cfg.num_numbers}: a reference answer nesting {cfg.num_numbers - 1} "
                         f"operations scores as {result} (nested deeper than Python's parser reads, e.g. over 200 "
                         "parentheses); lower task.num_numbers")


class Countdown(Task):
    """Countdown with generated problems; splits are disjoint by (sorted numbers, target)."""

    Config = CountdownConfig
    config: CountdownConfig

    def __init__(self, config: CountdownConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}
        self._used: set[tuple[tuple[int, ...], int]] = set()
        _check_scorer_reads_references(self.config)

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

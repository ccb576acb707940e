"""Countdown task: the safe evaluator, the d1 reward and the disjoint, deterministic generator."""
import os
import re
import time
from fractions import Fraction

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.task import EvalProtocol
from dllm_rl.tasks.countdown import (
    Countdown,
    CountdownConfig,
    InvalidExpression,
    evaluate_expression,
    numbers_used,
    verdict,
)

EXAMPLE = {"id": "countdown-test-x", "numbers": [3, 4, 5], "target": 19, "solution": "3*5+4"}
SMALL = dict(train_size=1500, validation_size=100, test_size=200)
PWNED = "/tmp/pwned_xyz"


def chat(answer_text):
    return f"<reasoning>try products first</reasoning>\n<answer>{answer_text}</answer>"


@pytest.mark.parametrize(
    "text, value",
    [
        ("2*(3+4)", 14),
        ("2*3+4", 10),
        ("-3+5", 2),
        ("4-(-3)", 7),
        ("7/2", Fraction(7, 2)),
        ("7/3*9", 21),
        (" (1 + 2) / 3 ", 1),
    ],
)
def test_evaluator_values(text, value):
    result = evaluate_expression(text)
    assert isinstance(result, Fraction) and result == value


def test_numbers_used_lists_literals_in_order():
    assert numbers_used("(12-3)*4") == [12, 3, 4]
    assert numbers_used("-3+5") == [3, 5]


@pytest.mark.parametrize(
    "text",
    [
        "2**99999",
        "2//3",
        "2%3",
        "__import__('os').system('touch /tmp/pwned_xyz')",
        "x+1",
        "abs(3)",
        "1.5+2",
        "1e3",
        "0x10",
        "True+1",
        "'12'",
        "[1][0]",
        "+3",
        "1234567",
        "1/0",
        "1/(2-2)",
        "1+" * 50 + "1",  # 101 characters
        "",
        "(1+2",
    ],
)
def test_evaluator_rejects(text):
    if os.path.exists(PWNED):
        os.remove(PWNED)
    start = time.perf_counter()
    with pytest.raises(InvalidExpression):
        evaluate_expression(text)
    with pytest.raises(InvalidExpression):
        numbers_used(text)
    assert time.perf_counter() - start < 0.1
    assert not os.path.exists(PWNED)


def test_evaluator_limits_are_inclusive_bounds():
    assert evaluate_expression("999999") == 999999
    assert evaluate_expression("1+" * 49 + "10") == 59  # exactly 100 characters


@pytest.mark.parametrize(
    "example, completion, expected",
    [
        (EXAMPLE, chat("3*5+4"), 1.0),
        (EXAMPLE, chat("(5*3)+4"), 1.0),
        (EXAMPLE, chat("\n4 + 5 * 3\n"), 1.0),  # multi-line answer needs DOTALL
        (EXAMPLE, chat("3*5+4 = 19"), 1.0),
        (EXAMPLE, chat("3*5+4=19"), 1.0),
        (EXAMPLE, chat("4*4+3"), 0.1),  # 4 reused, 5 unused, value right
        (EXAMPLE, chat("3*5+4+0"), 0.1),  # extra number
        (EXAMPLE, chat("3*4+5"), 0.1),  # right numbers, value 17
        (EXAMPLE, chat("3*5+4=20"), 1.0),  # a wrong stated result is dropped, the expression is judged
        (EXAMPLE, chat("3*5+4 is the answer"), 0.1),
        (EXAMPLE, chat("__import__('os').system('touch /tmp/pwned_xyz')"), 0.1),
        (EXAMPLE, chat(""), 0.1),  # d1: an empty tag is an answer, just a wrong one
        (EXAMPLE, "3*5+4", 0.0),  # chat style without a tag
        (EXAMPLE, chat("3*4+5") + chat("3*5+4"), 1.0),  # the last answer wins
        (EXAMPLE, chat("3*5+4") + chat("3*4+5"), 0.1),
        ({"numbers": [3, 4, 5], "target": 20}, chat("4*5"), 0.1),  # right value, 3 missing
        ({"numbers": [3, 7, 9], "target": 21}, chat("7/3*9"), 1.0),  # exact through a fraction
        ({"numbers": [3, 7, 9], "target": 3}, chat("(9-3)/7"), 0.1),  # 6/7, not 3
    ],
)
def test_chat_reward(example, completion, expected):
    if os.path.exists(PWNED):
        os.remove(PWNED)
    assert Countdown().reward(example, completion, "chat") == expected
    assert not os.path.exists(PWNED)


def test_direct_reward_and_score():
    task = Countdown()
    assert task.reward(EXAMPLE, " 3*5+4\n", "direct") == 1.0
    assert task.reward(EXAMPLE, "3*5+4=19", "direct") == 1.0
    assert task.reward(EXAMPLE, "3*4+5", "direct") == 0.1
    assert task.reward(EXAMPLE, "  ", "direct") == 0.0
    assert task.score(EXAMPLE, "3*5+4", "direct") == {"accuracy": 1.0}
    assert task.score(EXAMPLE, "3*4+5", "direct") == {"accuracy": 0.0}


@pytest.mark.parametrize("completion, expected", [
    ("3*5+4", 1.0), ("3*5+4=20", 1.0), ("3*4+5", 0.0), ("4*4+3", 0.0), ("1/0", 0.0), ("  ", 0.0),
    ("__import__('os')", 0.0),
])
def test_solved_reward_scores_only_right_equations(completion, expected):
    """``reward: solved`` drops d1's 0.1 for a wrong answer; accuracy is the same under both rewards."""
    solved, d1 = Countdown(CountdownConfig(reward="solved")), Countdown()
    assert solved.reward(EXAMPLE, completion, "direct") == expected
    assert solved.score(EXAMPLE, completion, "direct") == d1.score(EXAMPLE, completion, "direct") == {"accuracy": expected}
    with pytest.raises(ValueError, match="reward must be d1 or solved"):
        CountdownConfig(reward="cells")


@pytest.mark.parametrize("text, expected", [
    ("3*5+4", "solved"), ("4+5*3", "solved"), ("3*4+5", "wrong_value"), ("4*4+3", "wrong_numbers"),
    ("3*5+4+0", "wrong_numbers"), ("5*3", "wrong_numbers"), ("3/(5-5)+4", "no_expression"), ("3*5+", "no_expression"),
    ("", "no_expression"), (None, "no_expression"),
])
def test_verdict_sorts_answers(text, expected):
    """The breakdown benchmarks/decoding_steps.py reports: wrong numbers before wrong value."""
    assert verdict(EXAMPLE, text) == expected


def test_prompts_and_protocols():
    task = Countdown()
    assert task.prompt({"numbers": [12, 3, 4], "target": 36}, "direct") == "12 3 4>36="
    (message,) = task.prompt(EXAMPLE, "chat")
    assert message["role"] == "user"
    for text in ("[3, 4, 5]", "19", "exactly once", "<reasoning>", "<answer>"):
        assert text in message["content"]
    with pytest.raises(ValueError, match="direct, chat"):
        task.prompt(EXAMPLE, "cot")
    assert task.protocol("direct") == EvalProtocol(lengths=(16,), primary_metric="accuracy")
    assert task.protocol("chat") == EvalProtocol(lengths=(256, 128, 512), primary_metric="accuracy")


@pytest.fixture(scope="module")
def small():
    return Countdown(CountdownConfig(**SMALL))


def test_generated_examples_are_solvable_and_in_range(small):
    cfg = small.config
    for name in small.splits:
        examples = small.examples(name)
        assert len(examples) == getattr(cfg, f"{name}_size")
        assert [ex["id"] for ex in examples] == [f"countdown-{name}-{n}" for n in range(len(examples))]
        for ex in examples:
            assert len(ex["numbers"]) == 3 and all(1 <= n <= 99 for n in ex["numbers"])
            assert 1 <= ex["target"] <= 999
            assert evaluate_expression(ex["solution"]) == ex["target"]
            assert sorted(numbers_used(ex["solution"])) == sorted(ex["numbers"])
            for style in ("direct", "chat"):
                assert small.reward(ex, small.reference(ex, style), style) == 1.0


def test_splits_are_disjoint_by_numbers_and_target(small):
    keys = {
        name: {(tuple(sorted(ex["numbers"])), ex["target"]) for ex in small.examples(name)}
        for name in small.splits
    }
    assert all(len(keys[name]) == len(small.examples(name)) for name in small.splits)
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]


def test_generation_is_deterministic_and_seeded(small):
    again = Countdown(CountdownConfig(**SMALL))
    assert again.examples("train") == small.examples("train")  # train first: order of calls must not matter
    assert again.examples("test") == small.examples("test")
    assert Countdown(CountdownConfig(seed=1, **SMALL)).examples("test") != small.examples("test")
    # Test is generated first, so it does not depend on the train size.
    assert Countdown(CountdownConfig(**{**SMALL, "train_size": 10})).examples("test") == small.examples("test")


def test_ops_config_restricts_generated_operators():
    task = Countdown(CountdownConfig(ops="+", train_size=50, validation_size=10, test_size=10, max_target=300))
    for ex in task.examples("train"):
        assert set(ex["solution"]) <= set("0123456789+")
        assert sum(ex["numbers"]) == ex["target"]
    with pytest.raises(ValueError):
        CountdownConfig(ops="+^")


def test_impossible_config_fails_clearly():
    cfg = CountdownConfig(min_number=1, max_number=1, ops="+", train_size=5, validation_size=1, test_size=1)
    task = Countdown(cfg)
    only = {"id": "countdown-test-0", "numbers": [1, 1, 1], "target": 3, "solution": "1+1+1"}
    assert task.examples("test") == [only]
    with pytest.raises(UsageError, match=r"task.validation_size=1 is more than this countdown config can make \(only 0 validation"):
        task.examples("validation")  # 1+1+1 = 3 is the only problem and test already holds it


# -- limits that follow the config ---------------------------------------------------------------

MANY = dict(num_numbers=30, ops="+-", min_target=-10**6, max_target=10**6, train_size=20, validation_size=5, test_size=20)
WIDE = dict(min_number=1_000_000, max_number=9_999_999, ops="+-*", max_target=10**22, train_size=20, validation_size=5,
            test_size=20)


@pytest.mark.parametrize("config", [MANY, WIDE], ids=["30-numbers", "7-digit-numbers"])
def test_reference_answers_of_configs_beyond_the_old_fixed_limits_score_1(config):
    task = Countdown(CountdownConfig(**config))
    examples = task.examples("test")
    assert max(len(ex["solution"]) for ex in examples) > 100 or max(max(ex["numbers"]) for ex in examples) >= 10**6
    for ex in examples:
        for style in ("direct", "chat"):
            assert task.reward(ex, task.reference(ex, style), style) == 1.0
            assert task.score(ex, task.reference(ex, style), style) == {"accuracy": 1.0}
        spaced = " ".join(re.findall(r"\d+|\S", ex["solution"]))  # a model that spaces out every token
        assert verdict(ex, spaced) == "solved"
    # Hostile answers near the wider limits (30 numbers of 2 digits: 588 characters) are still rejected cheaply.
    hostile = ["9" * 580, "9" * 20_000, "(" * 250 + "1" + ")" * 250, "-" * 580 + "5", "1+" * 290 + "1",
               "-(" * 140 + "1" + ")" * 140, "9" * 20 + "*" + "9" * 20]
    for text in hostile:
        start = time.perf_counter()
        assert verdict(examples[0], text) in ("no_expression", "wrong_numbers")
        assert time.perf_counter() - start < 0.1, text[:20]


@pytest.mark.parametrize("config, key", [
    (dict(min_number=-9, max_number=9), "task.min_number"),  # "-9" reads as minus 9: never the given number
    (dict(num_numbers=250, ops="-", max_target=10**9), "task.num_numbers"),  # 248 nested parentheses; Python's parser reads 200
])
def test_a_config_whose_own_reference_answers_fail_is_refused_when_the_task_is_built(config, key):
    with pytest.raises(UsageError, match=rf"^{key}=") as exc:
        Countdown(CountdownConfig(**config))
    assert "\n" not in str(exc.value)

"""AceCoder on a shipped fixture in the AceCode-87K schema: the hard subset, splits, tests and reward."""
from pathlib import Path

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.tasks.acecoder import AceCoder, AceCoderConfig, hard_subset
from dllm_rl.tasks.code_data import read_rows

FIXTURE = Path(__file__).parents[1] / "fixtures" / "code" / "acecoder.jsonl"


@pytest.fixture(scope="module")
def task():
    t = AceCoder(AceCoderConfig(data_path=str(FIXTURE), subset="all", validation_size=2, test_size=2))
    yield t
    t.sandbox.close()


def test_hard_subset_by_hand():
    # Rates of (qwen_coder_2.5, llama3_instruct) per row; row 10 has neither model and is never rated.
    # Means sorted: 0, .125, .25, .25, .25, .5, .5, .75, .875, 1 -> 20th percentile = .125 + .8 * .125 = .225,
    # so rows 1 (mean 0) and 5 (mean .125) are hard enough; spreads sorted: 0 x4, .125 x2, .25 x4 -> 40th
    # percentile = .6 * .125 = .075, which row 1 (spread 0, both models fail) misses: only row 5 is kept.
    rows = read_rows(FIXTURE)
    kept = hard_subset(rows, ["qwen_coder_2.5", "llama3_instruct"], 20.0, 40.0)
    assert [r["id"] for r in kept] == ["oss_1005"]
    assert [r["id"] for r in hard_subset(rows, ["qwen_coder_2.5", "llama3_instruct"], 50.0, 0.0)] == [
        "oss_1001", "oss_1002", "oss_1005", "oss_1007", "oss_1009"]
    with pytest.raises(UsageError, match="subset=all"):
        hard_subset(rows, ["no_such_model"], 20.0, 40.0)
    with pytest.raises(UsageError, match="too few"):
        AceCoder(AceCoderConfig(data_path=str(FIXTURE))).examples("train")  # 1 hard question < 200 + 200 held out


def test_splits_are_disjoint_deterministic_and_keyed_by_seed(task):
    splits = {s: [ex["id"] for ex in task.examples(s)] for s in task.splits}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [7, 2, 2]
    assert len(set(sum(splits.values(), []))) == 11
    again = AceCoder(AceCoderConfig(data_path=str(FIXTURE), subset="all", validation_size=2, test_size=2))
    assert {s: [ex["id"] for ex in again.examples(s)] for s in again.splits} == splits
    other = AceCoder(AceCoderConfig(data_path=str(FIXTURE), subset="all", validation_size=2, test_size=2, seed=1))
    assert [ex["id"] for ex in other.examples("test")] != splits["test"]


def test_references_pass_every_test_including_classes_and_multi_line_asserts(task):
    examples = [ex for s in task.splits for ex in task.examples(s)]
    assert any("```" not in ex["reference"] and "Counter" in ex["reference"] for ex in examples)  # fenced inference unwrapped
    for style in ("direct", "chat"):
        rewards = task.rewards(examples, [task.reference(ex, style) for ex in examples], style)
        assert rewards == [2.5] * len(examples), style


def test_reward_is_fraction_of_tests_plus_format(task):
    ex = next(e for s in task.splits for e in task.examples(s) if e["id"] == "acecoder/oss_1000")  # is_even, 4 tests
    positive_only = "```python\ndef is_even(n):\n    return n > 0 and n % 2 == 0\n```"  # wrong for 0 and -4
    assert task.reward(ex, positive_only, "chat") == pytest.approx(2.0 * 2 / 4 + 0.5)
    assert task.score(ex, positive_only, "chat") == {"pass@1": 0.0, "test_pass_rate": 0.5}
    unfenced = "Here you go:\ndef is_even(n):\n    return n % 2 == 0\nHope it helps."
    assert task.reward(ex, unfenced, "chat") == pytest.approx(2.0)  # all tests pass, no format credit
    assert task.reward(ex, "```python\ndef is_even(n)\n    return\n```", "chat") == pytest.approx(0.25)
    assert task.reward(ex, "def is_even(n):\n    return n % 2 == 0\n```\nExplanation: modulo.", "direct") == pytest.approx(2.5)


def test_prompts(task):
    ex = task.examples("train")[0]
    assert task.prompt(ex, "direct") == ex["question"] + "\n\n```python\n"
    system, user = task.prompt(ex, "chat")
    assert system == {"role": "system", "content": "You are a helpful assistant."} and user["content"] == ex["question"]

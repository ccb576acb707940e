"""MBPP on shipped fixtures in the Hub schema (\\r\\n, tabs, setup code, tests relying on the program's imports)."""
from pathlib import Path

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.tasks.mbpp import MBPP, MBPPConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "code" / "mbpp"


@pytest.fixture(scope="module")
def task():
    t = MBPP(MBPPConfig(data_path=str(FIXTURE)))
    yield t
    t.sandbox.close()


@pytest.fixture(scope="module")
def by_id(task):
    return {ex["task_id"]: ex for split in task.splits for ex in task.examples(split)}


def test_splits_and_protocol(task, tmp_path):
    assert [len(task.examples(s)) for s in ("train", "validation", "test")] == [3, 1, 4]
    assert task.protocol("direct").shots == 3 and task.protocol("direct").primary_metric == "pass@1"
    with pytest.raises(ValueError, match="does not exist"):
        MBPPConfig(data_path=str(FIXTURE / "missing"))
    (tmp_path / "test.jsonl").write_text((FIXTURE / "test.jsonl").read_text())
    with pytest.raises(UsageError, match="no train file"):
        MBPP(MBPPConfig(data_path=str(tmp_path))).examples("train")


def test_direct_prompt_is_three_shot_lm_eval_format(task, by_id):
    text = task.prompt(by_id[11], "direct")
    assert text.count("[BEGIN]") == 4 and text.count("[DONE]") == 3 and text.endswith("[BEGIN]\n")
    assert text.startswith("You are an expert Python programmer, and here is your task: Write a function to find the shared")
    assert "\r" not in text and "\t" not in text  # the shots' code is normalised
    assert 'assert remove_occ("PHP", "P") == "H"\n[BEGIN]\n' in text
    assert "reverses a string" not in text  # only the first three prompt-split problems are shots


def test_chat_prompt_is_multi_turn(task, by_id):
    messages = task.prompt(by_id[11], "chat")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"].startswith("```python\ndef shared_elements")


def test_references_pass_in_both_styles(task):
    examples = [ex for s in task.splits for ex in task.examples(s)]
    for style in ("direct", "chat"):
        scores = task.scores(examples, [task.reference(ex, style) for ex in examples], style)
        assert all(s["pass@1"] == 1.0 for s in scores), style


def test_completion_after_done_is_ignored_and_fences_are_accepted(task, by_id):
    ex = by_id[11]
    good = normalize_code(ex["code"])
    assert task.score(ex, f"{good}\n[DONE]\nYou are an expert Python programmer, and here is", "direct")["pass@1"] == 1.0
    assert task.score(ex, f"```python\n{good}\n```\n[DONE]", "direct")["pass@1"] == 1.0


def normalize_code(code):
    return code.replace("\r\n", "\n").expandtabs(4)


def test_partial_credit_per_test(task, by_id):
    ex = by_id[11]  # remove the first and last occurrence of a character
    strip_ends = "def remove_occ(s, ch):\n    return s.strip(ch)\n[DONE]"  # right for "abcda" and "PHP" only
    assert task.score(ex, strip_ends, "direct") == {"pass@1": 0.0, "test_pass_rate": pytest.approx(2 / 3)}
    assert task.reward(ex, strip_ends, "direct") == pytest.approx(2.0 * 2 / 3 + 0.5)


def test_tests_see_the_programs_imports_and_the_setup_code(task, by_id):
    area = by_id[12]  # tests call math.isclose without importing math: the program's import serves
    assert task.score(area, "import math\ndef circle_area(r):\n    return math.pi * r ** 2\n[DONE]", "direct")["pass@1"] == 1.0
    no_import = task.score(area, "def circle_area(r):\n    return 3.141592653589793 * r * r\n[DONE]", "direct")
    assert no_import["test_pass_rate"] == pytest.approx(1 / 3)  # NameError in the two math.isclose tests
    assert task.score(by_id[13], "def total(d):\n    return sum(d.values())\n[DONE]", "direct")["pass@1"] == 1.0


def test_in_place_functions_and_wrong_answers(task, by_id):
    assert task.score(by_id[14], "def sort_inplace(xs):\n    xs.sort()\n[DONE]", "direct")["pass@1"] == 1.0
    assert task.score(by_id[14], "def sort_inplace(xs):\n    return sorted(xs)\n[DONE]", "direct")["test_pass_rate"] == pytest.approx(1 / 3)

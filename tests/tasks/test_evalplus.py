"""HumanEval+ and MBPP+ differential testing on shipped fixtures in EvalPlus's schema."""
from pathlib import Path

import pytest

pytest.importorskip("evalplus")

from dllm_rl.tasks.humaneval import HumanEvalPlus, HumanEvalPlusConfig  # noqa: E402
from dllm_rl.tasks.mbpp import MBPPPlus, MBPPPlusConfig  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "code"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "evalplus_cache"))


@pytest.fixture(scope="module")
def heplus():
    t = HumanEvalPlus(HumanEvalPlusConfig(data_path=str(FIXTURES / "humanevalplus.jsonl")))
    yield {ex["id"]: ex for ex in t.examples("test")}, t
    t.sandbox.close()


@pytest.fixture(scope="module")
def mbppplus():
    t = MBPPPlus(MBPPPlusConfig(data_path=str(FIXTURES / "mbppplus.jsonl")))
    yield {ex["id"]: ex for ex in t.examples("test")}, t
    t.sandbox.close()


def test_canonical_solutions_pass_and_expected_outputs_are_cached(heplus, tmp_path_factory):
    problems, task = heplus
    examples = list(problems.values())
    for style in ("direct", "chat"):
        scores = task.scores(examples, [task.reference(ex, style) for ex in examples], style)
        assert all(s == {"pass@1": 1.0, "base_pass@1": 1.0} for s in scores), (style, scores)
    cached = list((tmp_path_factory.getbasetemp() / "evalplus_cache" / "evalplus").glob("humaneval-*.json"))
    assert len(cached) == len(examples)
    fresh = HumanEvalPlus(HumanEvalPlusConfig(data_path=str(FIXTURES / "humanevalplus.jsonl")))
    fresh._sandbox = object()  # reading the cache must not need the sandbox
    ex = problems["HumanEval/12"]
    assert fresh.truth(ex) == task.truth(ex) and fresh.truth(ex)[0] == [None, "x", "zzzz", "", "abcd"]


def test_base_and_plus_inputs_are_told_apart(heplus):
    problems, task = heplus
    ex = problems["HumanEval/12"]
    # right on the base inputs; on the plus input ['', ''] it returns None instead of ''
    weak = "    return max(strings, key=len) if any(strings) else None\n"
    assert task.score(ex, weak, "direct") == {"pass@1": 0.0, "base_pass@1": 1.0}


def test_float_tolerance_and_find_zero_oracle(heplus):
    problems, task = heplus
    mad = problems["HumanEval/4"]
    reordered = "    m = sum(numbers) / len(numbers)\n    return sum(abs(m - x) for x in reversed(numbers)) / len(numbers)\n"
    assert task.score(mad, reordered, "direct")["pass@1"] == 1.0  # rounding differs, within 1e-6
    biased = "    m = sum(numbers) / len(numbers)\n    return sum(abs(x - m) for x in numbers) / (len(numbers) - 1)\n"
    assert task.score(mad, biased, "direct")["pass@1"] == 0.0
    zero = problems["HumanEval/32"]
    # any root passes (the oracle checks poly(x) == 0, not equality with the canonical root) ...
    newton = ("    x = 7.0\n    for _ in range(200):\n        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
              "        x -= poly(xs, x) / d if d else 1.0\n    return x\n")
    assert task.score(zero, newton, "direct")["pass@1"] == 1.0
    # ... an approximate one fails, and redefining poly does not help
    sloppy = "    return 1.0\n\n\ndef poly(xs, x):\n    return 0.0\n"
    assert task.score(zero, sloppy, "direct")["pass@1"] == 0.0


def test_mbpp_plus_inputs_decoded_and_special_oracles(mbppplus):
    problems, task = mbppplus
    similar = problems["Mbpp/2"]
    assert similar["base_input"][0] == [(3, 4, 5, 6), (5, 7, 4, 10)]  # evalplus's deserialisation: tuples
    examples = list(problems.values())
    assert all(s["pass@1"] == 1.0 for s in task.scores(examples, [task.reference(ex, "chat") for ex in examples], "chat"))
    # set-equality oracle: any order, list or tuple
    reordered = "```python\ndef similar_elements(a, b):\n    return sorted(set(b) & set(a), reverse=True)\n```"
    assert task.score(similar, reordered, "chat")["pass@1"] == 1.0
    assert task.score(similar, "```python\ndef similar_elements(a, b):\n    return list(a)\n```", "chat")["pass@1"] == 0.0
    # not-None oracle: a match object or a bool both count
    matcher = problems["Mbpp/787"]
    as_bool = "```python\nimport re\ndef text_match_three(text):\n    return bool(re.search('abbb', text))\n```"
    assert task.score(matcher, as_bool, "chat")["pass@1"] == 1.0
    assert task.score(matcher, "```python\ndef text_match_three(text):\n    return text\n```", "chat")["pass@1"] == 0.0


def test_big_ints_and_floats_travel_exactly(mbppplus):
    problems, task = mbppplus
    ex = problems["Mbpp/17"]
    assert task.truth(ex)[0][-1] == 4 * 10**30
    assert task.score(ex, "def square_perimeter(a):\n    return a + a + a + a\n", "direct")["pass@1"] == 1.0
    assert task.score(ex, "def square_perimeter(a):\n    return int(4 * a)\n", "direct")["pass@1"] == 1.0  # 2 == 2.0
    absolute = "def square_perimeter(a):\n    return 4 * abs(a)\n"  # wrong on the plus input -3 only
    assert task.score(ex, absolute, "direct") == {"pass@1": 0.0, "base_pass@1": 1.0}


def test_first_failure_stops_the_run(heplus):
    problems, task = heplus
    slow_wrong = "    import time\n    time.sleep(0.5)\n    return 'wrong'\n"
    verdict = task.sandbox.run(task.job(problems["HumanEval/12"], task.program(problems["HumanEval/12"], slow_wrong, "direct")))
    assert verdict.passed == [False] * 5 and verdict.wall_seconds < 3.0

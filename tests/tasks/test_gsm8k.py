"""GSM8K: data in the openai/gsm8k schema, the numeric parser on the inputs public parsers get wrong,
d1's reward with its format bugs fixed."""
import json
from fractions import Fraction
from pathlib import Path

import pytest

from dllm_rl.errors import UsageError
from dllm_rl.tasks.gsm8k import GSM8K, GSM8KConfig, parse_number

FIXTURE = Path(__file__).parents[1] / "fixtures" / "gsm8k.jsonl"


@pytest.fixture(scope="module")
def task():
    return GSM8K(GSM8KConfig(data_path=str(FIXTURE)))


@pytest.fixture(scope="module")
def examples(task):
    return task.examples("test")


def chat(reasoning, answer):
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def test_fixture_rows_become_examples_with_the_reference_answer(examples):
    assert len(examples) == 6
    assert [e["answer"] for e in examples] == ["18", "3", "70000", "540", "-7", "72"]
    assert len({e["id"] for e in examples}) == 6
    assert "<<" not in examples[0]["reasoning"] and "9 duck eggs" in examples[0]["reasoning"]


@pytest.mark.parametrize("text, value", [
    ("#### 72", 72),
    ("He made $<<200000-130000=70000>>70,000 profit\n#### 70000", 70000),
    ("The answer is $1,080.", 1080),
    ("It costs 18 dollars.", 18),
    ("\\boxed{\\$18}", 18),
    ("\\boxed{18\\text{ dollars}}", 18),
    ("It fell to -7 degrees", -7),
    ("It fell to \u22127 degrees", -7),
    ("First 5-3 = 2 apples, then 2 * 4 = 8", 8),
    ("0.2 x 50 = $10.00.", 10),
    ("1,2,3 and then 1,234,567", 1234567),
    ("She pays 12.5%", Fraction(25, 2)),
    ("It is 72. Again, 72.", 72),
    ("no number here", None),
    ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == (None if value is None else Fraction(value))


@pytest.mark.parametrize("completion, correct", [
    (chat("16 - 3 - 4 = 9 eggs; 9 * 2 = 18", "18"), True),
    (chat("...", "$18"), True),
    (chat("...", "18 dollars."), True),
    (chat("...", "\\boxed{18}"), True),
    (chat("...", "She makes\n$18\nevery day."), True),  # multi-line answer block (d1's regexes lack DOTALL)
    (chat("...", "17") + "\n<answer>\n18\n</answer>", True),  # answered twice: the last answer counts
    (chat("...", "18") + "\n<answer>\n17\n</answer>", False),
    (chat("I think it is 18", "20"), False),  # the answer block wins over numbers in the reasoning
    ("Janet makes 9 * 2 = $18 a day.", True),  # no tags: the last number of the completion
    ("Janet makes 18 dollars, not 9.", False),
    ("", False),
])
def test_correctness_on_tricky_completions(task, examples, completion, correct):
    assert task.score(examples[0], completion, "chat")["accuracy"] == float(correct)


def test_negative_and_comma_answers(task, examples):
    assert task.score(examples[4], chat("5 - 12", "-7"), "chat")["accuracy"] == 1.0
    assert task.score(examples[4], chat("5 - 12", "7"), "chat")["accuracy"] == 0.0
    assert task.score(examples[2], chat("...", "$70,000"), "chat")["accuracy"] == 1.0
    assert task.score(examples[2], chat("...", "70,000.00"), "chat")["accuracy"] == 1.0


def test_reward_components(task, examples):
    ex = examples[0]
    assert task.reward(ex, task.reference(ex, "chat"), "chat") == pytest.approx(4.0)  # every term
    # right number, not a plain integer, strict and soft format, all four tags: 2 + 0.5 + 0.5 + 0.5
    assert task.reward(ex, chat("multi\nline\nreasoning", "$18"), "chat") == pytest.approx(3.5)
    # right and integer but only soft format (no newlines inside the tags), tags without newlines: 2 + 0.5 + 0.5
    assert task.reward(ex, "<reasoning>9*2</reasoning><answer>18</answer>", "chat") == pytest.approx(3.0)
    # text after </answer> costs 0.001 per character and breaks the strict format
    assert task.reward(ex, chat("r", "18") + "\nabc", "chat") == pytest.approx(4.0 - 0.5 - 0.003)
    assert task.reward(ex, "The answer is 18", "chat") == pytest.approx(2.0)
    assert task.reward(ex, chat("r", "19"), "chat") == pytest.approx(2.0)  # format only
    assert task.reward(ex, "", "chat") == 0.0


def test_direct_style_prompt_reference_and_reward(task, examples):
    ex = examples[5]
    assert task.prompt(ex, "direct") == f"Question: {ex['question']}\nAnswer:"
    ref = task.reference(ex, "direct")
    assert ref.endswith("#### 72") and task.reward(ex, ref, "direct") == 1.0
    assert task.reward(ex, " 48 + 24 = 71\n#### 71", "direct") == 0.0
    assert task.score(ex, ref, "direct") == {"accuracy": 1.0, "strict_match": 1.0, "flexible_extract": 1.0}


def test_chat_prompt_carries_the_format_instruction(task, examples):
    (turn,) = task.prompt(examples[0], "chat")
    assert turn["role"] == "user" and turn["content"].endswith(examples[0]["question"])
    assert "<reasoning>" in turn["content"] and "<answer>" in turn["content"]
    protocol = task.protocol("chat")
    assert protocol.lengths == (256, 128, 512) and protocol.shots == 0 and protocol.parser


def test_train_and_validation_are_a_disjoint_split_of_the_official_train(tmp_path):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    (tmp_path / "main").mkdir()
    for split in ("train", "test"):  # a hub snapshot layout: main/<split>-00000-of-00001.jsonl
        (tmp_path / "main" / f"{split}-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = GSM8K(GSM8KConfig(data_path=str(tmp_path), validation_size=2, seed=3))
    train, val = task.examples("train"), task.examples("validation")
    assert len(train) == 4 and len(val) == 2
    assert not {e["id"] for e in train} & {e["id"] for e in val}
    assert {e["answer"] for e in train + val} == {"18", "3", "70000", "540", "-7", "72"}
    again = GSM8K(GSM8KConfig(data_path=str(tmp_path), validation_size=2, seed=3))
    assert [e["id"] for e in again.examples("validation")] == [e["id"] for e in val]


def test_offline_without_a_local_copy_is_one_clear_error():
    task = GSM8K(GSM8KConfig(hub_id="dllm-rl-tests/no-such-dataset"))
    with pytest.raises(UsageError) as exc:
        task.examples("test")
    msg = str(exc.value)
    assert "hf download dllm-rl-tests/no-such-dataset" in msg and "task.data_path" in msg and "\n" not in msg


def test_rows_in_another_schema_are_a_usage_error(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(UsageError, match="openai/gsm8k schema"):
        GSM8K(GSM8KConfig(data_path=str(bad))).examples("test")


# -- lm-eval's gsm8k conventions ------------------------------------------------------------------

def _lm_eval_gsm8k_yaml() -> dict:
    import yaml

    lm_eval = pytest.importorskip("lm_eval")
    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())


def test_regexes_stop_sequences_and_normalisation_are_lm_evals_own():
    from dllm_rl.tasks import gsm8k

    spec = _lm_eval_gsm8k_yaml()
    filters = {f["name"]: f["filter"][0] for f in spec["filter_list"]}
    assert gsm8k.STRICT_MATCH.pattern == filters["strict-match"]["regex_pattern"]
    assert filters["strict-match"].get("group_select", 0) == 0  # the first "#### n"
    assert gsm8k.FLEXIBLE_EXTRACT.pattern == filters["flexible-extract"]["regex_pattern"]
    assert filters["flexible-extract"]["group_select"] == -1  # the last number
    assert list(gsm8k.STOP_SEQUENCES) == spec["generation_kwargs"]["until"]
    (metric,) = spec["metric_list"]
    assert list(gsm8k.IGNORED) == metric["regexes_to_ignore"] and metric["ignore_case"]


# Completions lm-eval's two filters and the old parser disagree on (all in direct style, gold 1200).
TRICKY = [
    " He paid $1,200, which is what it cost.",  # comma right after a thousands-separated number
    " She had 2 bags of 600 each.\n#### 1,200, the answer",
    " #### 1200.\n#### 1300",  # several '####': strict-match takes the first
    " The total is -1,200.",
    " 1,200.00 dollars in all.",
    " It costs $1200. Then 5 more...",  # the last match is "..."
    " 2 * 600 = 1200\n\nQuestion: How many? Answer: 99\n#### 99",  # an invented next question
    " 2 * 600 = 1200</s>3",
    " #### $1,200",
    " #### -1200",
    " #### 1200.00",  # lm-eval compares strings: not 1200 (accuracy compares numbers: it is)
    " no number at all",
    "",
]


def test_direct_scores_equal_lm_evals_strict_and_flexible_filters_on_tricky_completions(task):
    """strict_match / flexible_extract are lm-eval's filters + exact_match, run here through lm-eval itself."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    spec = _lm_eval_gsm8k_yaml()
    (metric,) = spec["metric_list"]
    example = {"id": "x", "question": "q", "reasoning": "", "answer": "1200"}
    reference = "Two bags of 600.\n#### 1200"  # lm-eval's target is the whole answer field
    for f in spec["filter_list"]:
        name = f["name"].replace("-", "_")
        regex = f["filter"][0]
        flt = RegexFilter(regex["regex_pattern"], regex.get("group_select", 0))
        for completion in TRICKY:
            cut = completion
            for stop in spec["generation_kwargs"]["until"]:
                cut = cut.split(stop, 1)[0]
            (picked,), = flt.apply([[cut]], [example])
            expected = exact_match_hf_evaluate([picked], [reference], regexes_to_ignore=metric["regexes_to_ignore"],
                                               ignore_case=metric["ignore_case"])["exact_match"]
            assert task.score(example, completion, "direct")[name] == expected, (name, completion)


def test_parse_number_reads_as_lm_eval():
    cases = [
        ("He paid $1,200, which is what it cost.", 1200),  # the old parser read 200
        ("#### 1,200, the answer", 1200),
        ("#### 18 eggs, 3 left", 18),  # the number after '#### ', not the last number after it
        ("#### 18\n#### 20", 18),  # several: lm-eval's strict-match takes the first
        ("#### -7", -7),
        ("#### 3.50", Fraction(7, 2)),
        ("#### 18.", 18),
        ("#### $18", 18),  # strict-match reads no '$': flexible-extract does
        ("It costs $1,080.", 1080),
        ("The answer is 18...", None),  # flexible-extract's last match is "18..." (lm-eval: invalid)
        ("nothing here", None),
    ]
    assert [parse_number(text) for text, _ in cases] == [None if v is None else Fraction(v) for _, v in cases]


def test_direct_style_is_cut_at_lm_evals_stop_sequences(task, examples):
    ex = examples[0]  # gold 18
    invented = " 16 - 3 - 4 = 9 and 9 * 2 = 18\n#### 18\n\nQuestion: Tom has 99 apples. How many?\nAnswer: #### 99"
    assert task.score(ex, invented, "direct") == {"accuracy": 1.0, "strict_match": 1.0, "flexible_extract": 1.0}
    assert task.reward(ex, invented, "direct") == 1.0
    wrong = " 9 * 2 = 17\n#### 17\nQuestion: what is 9 * 2?\nAnswer: 18\n#### 18"
    assert task.score(ex, wrong, "direct")["accuracy"] == 0.0
    assert task.score(ex, " 9 * 2 = 18<|im_end|>Question: 5", "direct")["flexible_extract"] == 1.0

"""The <reasoning>/<answer> format checks and \\boxed{} extraction, on the inputs d1's versions miss."""
import pytest

from dllm_rl.answer_format import boxed_spans, last_boxed, soft_format, strict_format, xml_count

GOOD = "<reasoning>\nstep one\nstep two\n</reasoning>\n<answer>\n42\n</answer>"


def test_strict_format_accepts_multi_line_reasoning():
    assert strict_format(GOOD) and strict_format(GOOD + "\n")


@pytest.mark.parametrize("text", [
    "<reasoning>step</reasoning><answer>42</answer>",  # no newlines
    GOOD + "\nmore text",
    "preamble\n" + GOOD,
    "<reasoning>\na\n</reasoning>\n<answer>\n1\n</answer>\n<answer>\n2\n</answer>",  # two answers
    "<reasoning>\na\n<answer>\n1\n</answer>\n</reasoning>\n<answer>\n2\n</answer>",  # tag nested in reasoning
])
def test_strict_format_rejects(text):
    assert not strict_format(text)


def test_soft_format():
    assert soft_format(GOOD) and soft_format("<reasoning>a\nb</reasoning> <answer>4\n2</answer> trailing")
    assert soft_format("  \n" + GOOD)
    assert not soft_format("preamble <reasoning>a</reasoning><answer>1</answer>")
    assert not soft_format("<answer>1</answer><reasoning>a</reasoning>")
    assert not soft_format("<reasoning>a</reasoning>")


def test_xml_count():
    assert xml_count(GOOD) == pytest.approx(0.5)
    assert xml_count(GOOD + "\nxyz ") == pytest.approx(0.5 - 0.003)
    assert xml_count("<reasoning>a</reasoning><answer>1</answer>") == pytest.approx(0.0)
    assert xml_count(GOOD + GOOD) == pytest.approx(0.0)  # every tag twice


def test_last_boxed_with_nested_and_escaped_braces():
    assert last_boxed("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a} then \\boxed{\\sqrt{\\frac{b}{c}}}") == "\\sqrt{\\frac{b}{c}}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed {3}") == "3"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("no box") is None
    assert boxed_spans("x\\boxed{1}y") == [(8, 9)]

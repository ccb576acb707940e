"""Code extraction from completions, on the inputs public parsers get wrong."""
import time

import pytest

from dllm_rl.sandbox import Job, Sandbox
from dllm_rl.tasks.code_extract import (
    complete_function,
    defines,
    extract_code,
    fenced_blocks,
    keep_definitions,
    longest_parseable_run,
)

SOLUTION = "def add(a, b):\n    return a + b"


def test_signature_block_first_then_solution():
    # DiffuCoder and lm-eval take the first block: here only a signature, which does not even parse.
    text = "First the signature:\n```python\ndef add(a, b):\n```\nNow the code:\n```python\n" + SOLUTION + "\n```\n"
    assert extract_code(text) == SOLUTION


def test_usage_example_block_after_the_solution_is_dropped():
    text = f"```python\n{SOLUTION}\n```\nUsage:\n```python\nprint(add(1, 2))\nassert add(2, 2) == 5\n```"
    assert extract_code(text) == SOLUTION


def test_later_definition_wins_like_at_run_time():
    text = "```python\ndef add(a, b):\n    return a - b\n```\nOops, fixed:\n```python\n" + SOLUTION + "\n```"
    verdict = Sandbox(workers=1).run(Job(extract_code(text), ["assert add(1, 2) == 3"]))
    assert verdict.all_passed


@pytest.mark.parametrize("fence", ["```python", "```py", "```Python", "``` python", "```", "~~~python", "```python3"])
def test_fence_variants(fence):
    close = "~~~" if fence.startswith("~") else "```"
    assert extract_code(f"Here:\n{fence}\n{SOLUTION}\n{close}\nDone.") == SOLUTION


def test_other_languages_are_not_code():
    assert extract_code("```bash\npip install x\n```\n```json\n{\"a\": 1}\n```") is None


def test_unterminated_fence_cut_by_the_length_limit():
    text = f"```python\n{SOLUTION}\n\ndef helper(x):\n    return [x,"
    assert extract_code(text) == SOLUTION


def test_indented_fence_in_a_markdown_list_and_windows_newlines_and_tabs():
    text = "1. Define it:\r\n   ```python\r\n   def add(a, b):\r\n   \treturn a + b\r\n   ```\r\n"
    code = extract_code(text)
    assert code is not None and defines(code, "add") and "\t" not in code and "\r" not in code


def test_code_without_fences_between_prose():
    text = "The function is\ndef add(a, b):\n    total = a + b\n\n    return total\nThis works because addition is associative."
    assert extract_code(text) == "def add(a, b):\n    total = a + b\n\n    return total"


def test_multi_line_definitions_with_decorators_classes_and_constants():
    code = ("import functools\nLIMIT = 10\n\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n    if n < 2:\n        return n\n\n"
            "    return fib(n - 1) + fib(n - 2)\n\nclass Box:\n    def __init__(self, v):\n        self.v = v")
    assert extract_code(f"```python\n{code}\nprint(fib(LIMIT))\n```") == code


def test_function_without_return_statement_is_kept():
    # EvalPlus's sanitizer drops top-level functions without a return statement (in-place functions):
    # with an import beside it, only the import is left.
    sanitize = pytest.importorskip("evalplus.sanitize").sanitize
    code = "import math\n\ndef sort_in_place(xs):\n    xs.sort(key=math.fabs)"
    assert sanitize(f"```python\n{code}\n```", "sort_in_place") == "import math"
    assert extract_code(f"```python\n{code}\n```") == code


def test_main_guard_prints_and_own_asserts_are_dropped():
    text = f"```python\n{SOLUTION}\n\nassert add(1, 1) == 3\nprint(add(2, 3))\nif __name__ == '__main__':\n    add(input(), 1)\n```"
    assert extract_code(text) == SOLUTION


def test_nothing_parseable():
    assert extract_code("I cannot solve this.") is None
    assert extract_code("```python\ndef add(a, b)\n    return\n```") is None
    assert extract_code("") is None


def test_fenced_blocks_keeps_order_and_tags():
    blocks = fenced_blocks("a\n```py\nx = 1\n```\nb\n```\ny = 2\n```\n```text\nz")
    assert blocks == [("py", "x = 1\n"), ("", "y = 2\n"), ("text", "z")]


def test_complete_function_keeps_helpers_after_the_body():
    # Codex-style stop sequences ("\ndef", "\nprint") would cut the helper the body calls.
    prompt = 'def double_all(xs):\n    """Double every element."""\n'
    continuation = "    return [_double(x) for x in xs]\n\n\ndef _double(x):\n    return 2 * x\n\nprint(double_all([1]))\ndef broken(\n"
    code = complete_function(prompt, continuation)
    assert defines(code, "_double") and "print" not in code and "broken" not in code
    assert Sandbox(workers=1).run(Job(code, ["assert double_all([1, 2]) == [2, 4]"])).all_passed


def test_complete_function_with_nothing_usable_returns_the_prompt():
    prompt = 'def f(x):\n    """Doc."""\n'
    assert complete_function(prompt, "    return (") == prompt.rstrip("\n")


def test_keep_definitions_drops_statements_but_keeps_layout():
    code = "x = 1\nprint(x)\n\n# helper\ndef f():\n    return x\nf()"
    assert keep_definitions(code) == "x = 1\n\n# helper\ndef f():\n    return x"


def test_extraction_time_is_bounded_on_long_messy_text():
    lines = []
    for i in range(150):
        lines += [f"def f{i}(x):", "    return (x +", "prose line that breaks the code"]
    start = time.monotonic()
    longest_parseable_run("\n".join(lines))
    extract_code("\n".join(lines))
    assert time.monotonic() - start < 5.0

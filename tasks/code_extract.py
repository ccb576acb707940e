"""Turn a model's completion into the program to test, with ``ast`` (parsed, never executed).

Public parsers fail in known ways: the first ```python block only (DiffuCoder, lm-eval) when a
model first shows a signature or ends with a usage example; exact "```python\\n" fences only (no
```py, ```Python, unterminated fences cut by the length limit, indented fences); code without
fences dropped; EvalPlus's sanitizer dropping functions that have no return statement. Here all
Python-looking blocks are joined in order (a later definition overrides an earlier one, as when
the code runs), unparseable blocks are skipped, unfenced code is recovered as the longest
parseable run of lines, and top-level statements other than imports, definitions and assignments
(prints, example calls, the model's own asserts, ``if __name__ == "__main__":``) are dropped."""
from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+.#-]*)[^\n]*$", re.MULTILINE)
PYTHON_TAGS = {"", "python", "python3", "py", "py3", "ipython", "pycon"}
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
         ast.AnnAssign, ast.AugAssign, ast.Try)
MAX_SCAN_LINES = 200


def normalize(text: str) -> str:
    """Unix newlines and no tabs-vs-spaces ambiguity (the tiny model's vocabulary has neither \\r nor \\t)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, in order; an unterminated last block runs to the end."""
    blocks, open_tag, open_end, open_indent = [], None, 0, ""
    for m in _FENCE.finditer(text):
        indent = m.group(0)[: len(m.group(0)) - len(m.group(0).lstrip())]
        if open_tag is None:
            open_tag, open_end, open_indent = m.group(2).lower(), m.end() + 1, indent
        else:
            blocks.append((open_tag, _dedent(text[open_end:m.start()], open_indent)))
            open_tag = None
    if open_tag is not None:
        blocks.append((open_tag, _dedent(text[open_end:], open_indent)))
    return blocks


def _dedent(body: str, indent: str) -> str:
    if not indent:
        return body
    return "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.split("\n"))


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def longest_parseable_run(text: str) -> str:
    """The longest run of consecutive lines that parses as Python (most non-blank lines wins)."""
    lines = text.split("\n")[:MAX_SCAN_LINES]
    best, best_len = "", 0
    for i in range(len(lines)):
        if not lines[i].strip() or lines[i][0].isspace():
            continue  # a run starts at a top-level statement
        j = len(lines)
        while j > i and sum(1 for line in lines[i:j] if line.strip()) > best_len:
            chunk = "\n".join(lines[i:j])
            try:
                ast.parse(chunk)
            except SyntaxError as exc:  # cut just before the offending line (at least one line shorter)
                bad = exc.lineno if exc.lineno and exc.lineno >= 1 else j - i
                j = min(j - 1, i + bad - 1)
                continue
            except (ValueError, RecursionError, MemoryError):
                j -= 1
                continue
            best, best_len = chunk, sum(1 for line in lines[i:j] if line.strip())
            break
    return best


def keep_definitions(code: str) -> str:
    """Only imports, function/class definitions, assignments and try-blocks at the top level."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    dropped = set()
    for node in tree.body:
        if not isinstance(node, _KEEP):
            dropped.update(range(_start(node), node.end_lineno + 1))
    if not dropped:
        return code
    lines = code.split("\n")
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in dropped).strip("\n")


def _start(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decorators])


def defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               or isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)
               for n in tree.body)


def extract_code(completion: str) -> str | None:
    """The program in a chat-style answer: all parseable Python blocks joined, else the longest
    parseable run of lines; top-level non-definitions dropped. None if nothing parses."""
    text = normalize(completion)
    blocks = [body for tag, body in fenced_blocks(text) if tag in PYTHON_TAGS]
    good = [b for b in blocks if b.strip() and parses(b)]
    if good:
        code = "\n\n".join(b.strip("\n") for b in good)
    else:
        code = longest_parseable_run(text)
    code = keep_definitions(code).strip("\n")
    return code if code.strip() and parses(code) else None


def complete_function(prefix: str, continuation: str) -> str | None:
    """``prefix`` (a function signature and docstring) plus the longest leading part of the model's
    ``continuation`` that parses with it; later top-level statements dropped. None if nothing parses."""
    prefix, continuation = normalize(prefix), normalize(continuation)
    lines = continuation.split("\n")
    for j in range(len(lines), -1, -1):
        code = prefix + "\n".join(lines[:j])
        if parses(code):
            kept = keep_definitions(code).strip("\n")
            return kept if kept.strip() else None
    return None

"""The ``<reasoning>...</reasoning><answer>...</answer>`` answer layout of d1-style prompts: format checks
for format rewards, and extraction of the last ``\\boxed{...}`` with nested braces.

d1's format regexes lack DOTALL (a multi-line reasoning never matches) and its ``"\\boxed"`` check is a
broken escape (``"\\b"`` is a backspace, so it never matches); these versions fix both."""
from __future__ import annotations

import re

_BODY = r"(?:(?!</?(?:reasoning|answer)>).)*?"  # any text, across lines, holding no other tag
_STRICT = re.compile(rf"<reasoning>\n{_BODY}\n</reasoning>\n<answer>\n{_BODY}\n</answer>\n?", re.DOTALL)
_SOFT = re.compile(rf"\s*<reasoning>{_BODY}</reasoning>\s*<answer>{_BODY}</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def strict_format(completion: str) -> bool:
    """The whole completion is exactly ``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>``."""
    return _STRICT.fullmatch(completion) is not None


def soft_format(completion: str) -> bool:
    """The completion starts with a reasoning block followed by an answer block (text may follow)."""
    return _SOFT.match(completion) is not None


def xml_count(completion: str) -> float:
    """d1's tag-count term: 0.125 for each of the four tags present exactly once (with its newline),
    minus 0.001 per non-blank character written after the last ``</answer>`` (at most 0.5)."""
    score = 0.0
    for tag in ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>"):
        if completion.count(tag) == 1:
            score += 0.125
    if "</answer>" in completion:
        score -= 0.001 * len(completion.rsplit("</answer>", 1)[1].strip())
    return score


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every complete ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    spans = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    spans.append((start, i))
                    break
    return spans


def last_boxed(text: str) -> str | None:
    """Contents of the last complete ``\\boxed{...}`` in ``text`` (nested braces kept), or None."""
    spans = boxed_spans(text)
    if not spans:
        return None
    start, end = spans[-1]
    return text[start:end]

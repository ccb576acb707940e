"""Turn a model's completion into the program to test, with ``ast`` and ``symtable`` (parsed, never executed).

EvalPlus's sanitizer (``evalplus.sanitize``) is the reference: unfenced code is its longest parseable
run of lines, and the program keeps imports and the definitions reachable from the entry point (when
one is given). The tests hold this module to EvalPlus's own sanitizer cases. It differs where EvalPlus
drops code the program needs or keeps code that breaks it:

- every Python-looking fenced block (```python, ```py, untagged, ~~~, indented in a list, unterminated
  at the length limit) is joined in order, not just the longest run of lines; a block that does not
  parse is skipped (the first-block rule of DiffuCoder and lm-eval misses a solution after a signature);
- a redefinition is kept after the first, so the last one wins as when the code runs (EvalPlus keeps
  the first); functions without a ``return`` are kept (EvalPlus drops them, and in-place solutions);
- top-level code that builds what the definitions read is kept: loops and ``if``/``with`` blocks that
  assign, subscript-assign or call a method on such a name (a table built by a loop), and ``if``
  blocks that define functions or classes (EvalPlus keeps only plain assignments);
- bare annotations are dropped: prose such as ``Complexity: O(n^2)`` parses as one and would fail
  when the module runs (EvalPlus keeps it without an entry point);
- prints, example calls, the model's own asserts and ``if __name__ == "__main__":`` are dropped."""
from __future__ import annotations

import ast
import re
import symtable

_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+.#-]*)[^\n]*$", re.MULTILINE)
PYTHON_TAGS = {"", "python", "python3", "py", "py3", "ipython", "pycon"}
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_KEEP = _DEFINITIONS + (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Try) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())
"""Top-level statements kept without an entry point (bare annotations excepted)."""
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
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
    """The longest run of consecutive lines that parses as Python (most non-blank lines wins; the first
    of equals), as EvalPlus's ``code_extract``, within the first ``MAX_SCAN_LINES`` lines and with far
    fewer parses (a failed parse cuts the run just before the offending line)."""
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
            while not lines[j - 1].strip():  # end at the last non-blank line, as EvalPlus's code_extract
                j -= 1
            best, best_len = "\n".join(lines[i:j]), sum(1 for line in lines[i:j] if line.strip())
            break
    return best


def keep_definitions(code: str, entry_point: str | None = None) -> str:
    """The statements the program needs, layout kept. With ``entry_point`` (when the code binds it):
    imports and the statements that bind a name the entry point reaches (EvalPlus's rule). Without:
    imports, definitions, assignments and try-blocks, plus other statements that define functions or
    classes or that write a name those read. Either way, no bare annotations and no ``__main__`` block."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    nodes = [n for n in tree.body if not _never_kept(n)]
    names = {id(n): _names(n) for n in nodes}
    imported = {name for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)) for name in names[id(n)][0]}
    # What a statement writes: what it binds, and what it changes unless that is a module (unittest.main()).
    writes = {i: binds | (changes - imported) for i, (binds, changes, _) in names.items()}
    if entry_point is not None and any(entry_point in names[id(n)][0] for n in nodes):
        kept = {id(n) for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))}
        needed = {entry_point}
    else:
        kept = {id(n) for n in nodes if isinstance(n, _KEEP) or _defines(n)}
        needed = set().union(*(names[i][2] for i in kept))
    grew = True
    while grew:  # keep what writes a needed name; what it reads is needed too
        grew = False
        for n in nodes:
            if id(n) not in kept and writes[id(n)] & needed:
                kept.add(id(n))
                needed |= names[id(n)][2]
                grew = True
    spans = [(_start(n), n.end_lineno) for n in tree.body if id(n) not in kept]
    if not spans:
        return code
    dropped = {line for first, last in spans for line in range(first, last + 1)}
    lines = code.split("\n")
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in dropped).strip("\n")


def _never_kept(node: ast.stmt) -> bool:
    """Bare annotations (prose like ``Complexity: O(n^2)`` parses as one) and ``if __name__ == "__main__":``."""
    if isinstance(node, ast.AnnAssign) and node.value is None:
        return True
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and "__name__" in {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)})


def _defines(node: ast.stmt) -> bool:
    """Whether a compound statement defines a function or class or imports at module level (a def in an ``if``)."""
    return any(isinstance(n, _DEFINITIONS) for n in _module_level(node))


def _module_level(node: ast.AST):
    """``node`` and its descendants that run at module level: not inside a function, class or lambda."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, _SCOPES):
            stack.extend(ast.iter_child_nodes(n))


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _names(node: ast.stmt) -> tuple[set[str], set[str], set[str]]:
    """(names the statement binds at module level; names whose contents it changes there: ``T[i] = v``,
    ``T.x = v``, ``T.append(v)``; global names it reads and does not bind, nested scopes included), by ``symtable``."""
    try:
        table = symtable.symtable(ast.unparse(node), "<completion>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        return names, set(), names
    symbols = table.get_symbols()
    binds = {s.get_name() for s in symbols if s.is_assigned() or s.is_imported()}
    reads = {s.get_name() for s in symbols if s.is_referenced()}
    scopes = list(table.get_children())
    while scopes:
        scope = scopes.pop()
        reads |= {s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced()}
        scopes.extend(scope.get_children())
    changes = set()
    for n in _module_level(node):
        if isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, (ast.Store, ast.Del)):
            changes.add(_root(n))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            changes.add(_root(n.func.value))
    return binds, changes - {None}, reads - binds  # its own names (a loop variable) are no one else's to supply


def _start(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decorators])


def defines(code: str, name: str) -> bool:
    """Whether ``code`` binds ``name`` at the top level (also inside an ``if`` or ``try``)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(name in _names(n)[0] for n in tree.body if not _never_kept(n))


def extract_code(completion: str, entry_point: str | None = None) -> str | None:
    """The program in a chat-style answer: all parseable Python blocks joined, else the longest
    parseable run of lines; then ``keep_definitions`` (reachable from ``entry_point`` if given and
    bound). None if nothing parses."""
    text = normalize(completion)
    blocks = [body for tag, body in fenced_blocks(text) if tag in PYTHON_TAGS]
    good = [b for b in blocks if b.strip() and parses(b)]
    if good:
        code = "\n\n".join(b.strip("\n") for b in good)
    else:
        code = longest_parseable_run(text)
    code = keep_definitions(code, entry_point).strip("\n")
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

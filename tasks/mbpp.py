"""MBPP (3-shot, lm-evaluation-harness format) and MBPP+ (EvalPlus, 0-shot).

Data: MBPP from the Hub (``google-research-datasets/mbpp``, config ``full``: train 374, validation
90, test 500, and the ``prompt`` split whose first three problems are the shots) or a local folder
of per-split files (``task.data_path``); MBPP+ through ``evalplus`` (``MBPP_OVERRIDE_PATH`` or
``task.data_path`` for a local copy). MBPP's three ``assert`` tests are the tests; the reward uses
the fraction passed, the metric requires all three."""
from __future__ import annotations

from dataclasses import dataclass

from dllm_rl.sandbox import Job
from dllm_rl.task import Example, Prompt, check_style

from .code_data import load_rows, local_file, require
from .code_extract import complete_function, extract_code, normalize
from .code_task import CodeTask, CodeTaskConfig
from .evalplus_task import EvalPlusConfig, EvalPlusTask, published_problems
from .humaneval import INSTRUCTION

HUB_ID, HUB_CONFIG = "google-research-datasets/mbpp", "full"
DONE = "[DONE]"


@dataclass
class MBPPConfig(CodeTaskConfig):
    data_path: str | None = None
    """A folder with train/validation/test/prompt files in the Hub's schema, or a hub snapshot; None = the Hub."""
    shots: int = 3


def _task_text(row: dict) -> str:
    tests = "\n".join(row["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n")


class MBPP(CodeTask):
    """MBPP: pass@1 over its 500 test problems; prompts follow lm-evaluation-harness's ``mbpp`` task."""

    Config = MBPPConfig
    config: MBPPConfig
    splits = ("train", "validation", "test")

    def __init__(self, config: MBPPConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}

    @property
    def shots(self) -> int:  # the protocol's declared number of shots
        return self.config.shots

    def _rows(self, split: str) -> list[Example]:
        if split not in self._cache:
            rows = load_rows(HUB_ID, split, HUB_CONFIG, self.config.data_path, task="mbpp")
            self._cache[split] = [{"id": f"mbpp/{r['task_id']}", "task_id": r["task_id"], "text": r["text"],
                                   "code": r["code"], "test_list": list(r["test_list"]),
                                   "test_setup_code": r.get("test_setup_code") or ""} for r in rows]
        return self._cache[split]

    def examples(self, split: str) -> list[Example]:
        self._check_split(split)
        return list(self._rows(split))

    def fewshot(self) -> list[Example]:
        return self._rows("prompt")[: self.config.shots] if self.config.shots else []

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        if style == "direct":
            shots = [_task_text(s) + "[BEGIN]\n" + normalize(s["code"]) + "\n" + DONE for s in self.fewshot()]
            return "\n\n".join(shots + [_task_text(example) + "[BEGIN]\n"])
        messages = []
        for s in self.fewshot():
            messages += [{"role": "user", "content": _task_text(s)},
                         {"role": "assistant", "content": f"```python\n{normalize(s['code'])}\n```"}]
        return messages + [{"role": "user", "content": _task_text(example)}]

    def direct_code(self, example: Example, completion: str) -> str:
        return completion.split(DONE)[0]

    def program(self, example: Example, completion: str, style: str) -> str | None:
        check_style(style)
        return extract_code(self.direct_code(example, completion) if style == "direct" else completion)

    def job(self, example: Example, program: str) -> Job:
        return Job(program, tests=list(example["test_list"]), setup=example["test_setup_code"])

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        code = normalize(example["code"]).strip("\n")
        return f"{code}\n{DONE}" if style == "direct" else f"```python\n{code}\n```"


@dataclass
class MBPPPlusConfig(EvalPlusConfig):
    data_path: str | None = None
    """A MbppPlus.jsonl(.gz); None = evalplus's copy (downloaded once, or MBPP_OVERRIDE_PATH)."""


class MBPPPlus(EvalPlusTask):
    """MBPP+ (378 problems): EvalPlus's prompt (description and one example assert), 0-shot."""

    Config = MBPPPlusConfig
    config: MBPPPlusConfig
    dataset = "mbpp"

    def __init__(self, config: MBPPPlusConfig | None = None):
        super().__init__(config)
        self._examples: list[Example] | None = None

    def examples(self, split: str) -> list[Example]:
        self._check_split(split)
        if self._examples is None:
            if self.config.data_path:
                mbpp = require("evalplus.data.mbpp")
                rows = require("evalplus.data.utils").stream_jsonl(str(local_file(self.config.data_path)))
                problems = {}
                for t in rows:  # the same input decoding (tuples, sets, complex) as evalplus's loader
                    t["base_input"] = mbpp.mbpp_deserialize_inputs(t["task_id"], t["base_input"])
                    t["plus_input"] = mbpp.mbpp_deserialize_inputs(t["task_id"], t["plus_input"])
                    problems[t["task_id"]] = t
            else:
                problems = published_problems(self.dataset)
            order = sorted(problems.items(), key=lambda kv: int(kv[0].rsplit("/", 1)[-1]))
            self._examples = [{"id": tid, **p} for tid, p in order]
        return list(self._examples)

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        if style == "direct":
            return example["prompt"]
        return [{"role": "user", "content": f"{INSTRUCTION}\n```\n{example['prompt'].strip()}\n```\n"}]

    def direct_code(self, example: Example, completion: str) -> str:
        return normalize(example["prompt"]) + completion

    def program(self, example: Example, completion: str, style: str) -> str | None:
        check_style(style)
        if style == "direct":
            return complete_function(example["prompt"], completion)
        return extract_code(completion, example["entry_point"])

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        code = normalize(example["canonical_solution"])
        return code if style == "direct" else f"```python\n{code.strip()}\n```"

"""AceCoder (AceCode-87K): the code RL training data of ESPO, which follows DiffuCoder's hard subset.

Each row is a question, a list of ``assert`` tests, and inferences of several models with their test
pass rates. DiffuCoder's "hard" subset (which ESPO trains on): over the inferences of
``qwen_coder_2.5`` and ``llama3_instruct``, keep the questions whose mean pass rate is at most the
20th percentile and whose pass-rate spread (population std) is at least the 40th percentile, both
percentiles taken over the whole dataset. (DiffuCoder also adds a rephrased copy of some
questions; that augmentation is not reproduced here.) Validation and test splits are held-out
slices of the subset, chosen by a keyed hash of the question id, for checkpoint selection and a
quick in-distribution score; the paper's benchmarks are the humaneval/mbpp tasks.

Reward: ``2 * fraction of tests passed + 0.5 * format`` (DiffuCoder's weights)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dllm_rl.errors import UsageError
from dllm_rl.sandbox import Job
from dllm_rl.task import Example, Prompt, check_style

from .code_data import load_rows
from .code_extract import extract_code, fenced_blocks, normalize
from .code_task import CodeTask, CodeTaskConfig

SYSTEM = "You are a helpful assistant."
SUBSETS = ("hard", "all")


@dataclass
class AceCoderConfig(CodeTaskConfig):
    hub_id: str = "TIGER-Lab/AceCode-87K"
    data_path: str | None = None
    """A local JSON Lines / Parquet file in the Hub's schema; None = the Hub."""
    subset: str = "hard"
    hard_models: list[str] = field(default_factory=lambda: ["qwen_coder_2.5", "llama3_instruct"])
    hard_mean_percentile: float = 20.0
    hard_std_percentile: float = 40.0
    validation_size: int = 200
    test_size: int = 200

    def __post_init__(self):
        super().__post_init__()
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {self.subset!r}")
        if self.validation_size < 0 or self.test_size < 0:
            raise ValueError("validation_size and test_size must be >= 0")


def hard_subset(rows: list[dict], models: list[str], mean_percentile: float, std_percentile: float) -> list[dict]:
    """Rows that the given models find hard (low mean pass rate) yet not uniformly (high spread)."""
    import numpy as np

    rates = [[inf["pass_rate"] for inf in row["inferences"] if inf["model_name"] in models] for row in rows]
    rated = [r for r in rates if r]
    if not rated:
        raise UsageError(f"no AceCoder row has inferences from {', '.join(models)}; use --set task.subset=all")
    mean_cut = np.percentile([np.mean(r) for r in rated], mean_percentile)
    std_cut = np.percentile([np.std(r) for r in rated], std_percentile)
    return [row for row, r in zip(rows, rates) if r and np.mean(r) <= mean_cut and np.std(r) >= std_cut]


def best_inference(row: dict) -> str | None:
    """Code of the inference with the highest pass rate (reference completions for the tiny model)."""
    if not row.get("inferences"):
        return None
    best = max(row["inferences"], key=lambda inf: inf["pass_rate"])["completion"]
    return extract_code(best) or normalize(best).strip("\n")


class AceCoder(CodeTask):
    """AceCode-87K questions with their synthesized ``assert`` tests."""

    Config = AceCoderConfig
    config: AceCoderConfig
    eval_split = "test"

    def __init__(self, config: AceCoderConfig | None = None):
        super().__init__(config)
        self._splits: dict[str, list[Example]] | None = None

    def _load(self) -> dict[str, list[Example]]:
        c = self.config
        rows = load_rows(c.hub_id, "train", None, c.data_path, task="acecoder")
        if c.subset == "hard":
            rows = hard_subset(rows, c.hard_models, c.hard_mean_percentile, c.hard_std_percentile)
        if len(rows) <= c.validation_size + c.test_size:
            raise UsageError(f"acecoder {c.subset} subset has {len(rows)} questions, too few for "
                             f"validation_size={c.validation_size} and test_size={c.test_size}")
        examples = [{"id": f"acecoder/{row['id']}", "question": row["question"], "tests": list(row["test_cases"]),
                     "reference": best_inference(row)} for row in rows]
        rank = sorted(range(len(examples)),
                      key=lambda i: hashlib.sha256(f"{c.seed}/{examples[i]['id']}".encode()).hexdigest())
        test, val = set(rank[: c.test_size]), set(rank[c.test_size: c.test_size + c.validation_size])
        return {"test": [examples[i] for i in sorted(test)], "validation": [examples[i] for i in sorted(val)],
                "train": [ex for i, ex in enumerate(examples) if i not in test and i not in val]}

    def examples(self, split: str) -> list[Example]:
        self._check_split(split)
        if self._splits is None:
            self._splits = self._load()
        return list(self._splits[split])

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        if style == "direct":
            return f"{example['question']}\n\n```python\n"
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example["question"]}]

    def direct_code(self, example: Example, completion: str) -> str:
        blocks = fenced_blocks("```python\n" + normalize(completion))
        return blocks[0][1] if blocks else ""

    def program(self, example: Example, completion: str, style: str) -> str | None:
        check_style(style)
        return extract_code("```python\n" + completion if style == "direct" else completion)

    def job(self, example: Example, program: str) -> Job:
        return Job(program, tests=list(example["tests"]))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        code = example["reference"]
        if code is None:
            raise NotImplementedError(f"{example['id']} has no inference to use as a reference")
        return f"{code}\n```" if style == "direct" else f"```python\n{code}\n```"

"""The data task: post-train on your own file of prompts (and reference answers) with rewards chosen by
name or by import path, without writing a plugin (docs/data.md).

``--task data:PATH`` reads a JSONL, JSON, CSV or Parquet file, a folder of per-split files, a path
containing ``{split}``, or a YAML spec holding these settings, through ``datasets`` from local files
only. Fields are mapped to ``prompt`` / ``answer`` / ``id``; a ``{field}`` template builds the prompt.
The task is built (files read, fields, ids, rewards and templates checked) before any model loads,
and records the files' sha256, the field mapping and each reward's source hash in its config."""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dllm_rl.errors import UsageError
from dllm_rl.hub_data import BUILDERS, no_usage_ping
from dllm_rl.task import EvalProtocol, Example, Prompt, Task, TaskConfig, check_style, keyed_random

from .data_rewards import BUILTINS, Reward, file_sha256, resolve

PROMPT_FIELDS = ("prompt", "question", "problem", "input", "messages")
"""Looked for in this order when ``prompt_field`` is not set."""
ANSWER_FIELDS = ("answer", "completion", "target", "output")
"""Looked for in this order when ``answer_field`` is not set (then a final assistant turn of chat messages)."""
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
"""File names (stems, or their prefixes before ``-``, ``_`` or ``.``) read as each split."""
SPEC_SUFFIXES = (".yaml", ".yml")
TEMPLATES = ("template", "user_template", "system")


@dataclass
class DataConfig(TaskConfig):
    """Where the data is, how its fields map to prompt / answer / id, the prompt template, the splits,
    the rewards and the metric. The fields after ``lengths`` are recorded by the task, not settings."""

    seed: int = 0
    """Seed of the split of one file into train / validation / test (not the run seed)."""
    path: str = ""
    """A data file, a folder with train/validation/test files, a path containing {split}, or a YAML spec."""
    spec: str | None = None
    """The YAML spec the settings came from (set by ``data:SPEC.yaml``); its relative paths are relative to its folder."""
    dataset: str | None = None
    """Short name of the data in results and compare; None: the file's or folder's name."""
    prompt_field: str | None = None
    """Field holding the prompt (text or chat messages); None: the first of PROMPT_FIELDS the data has."""
    answer_field: str | None = None
    """Field holding the reference answer; None: the first of ANSWER_FIELDS, else a final assistant turn of
    chat messages, else no answers."""
    id_field: str | None = None
    """Field holding a unique id; None: ``id`` if the data has it, else the row; "": always the row."""
    template: str = "{prompt}"
    """The prompt (direct style) and the user turn (chat style), with {field} placeholders."""
    user_template: str | None = None
    """The user turn in chat style, if it differs from ``template``."""
    system: str | None = None
    """A system message in chat style."""
    validation_fraction: float = 0.1
    """Share of a file (or of the train file, without a validation file) held out as validation."""
    test_fraction: float = 0.1
    """Share of a file (or of the train file, without a test file) held out as test."""
    rewards: list[str] | str | None = None
    """Reward names or import paths, summed with ``reward_weights``; None: exact_match."""
    reward_weights: list[float] | None = None
    """One weight per reward; None: 1.0 each."""
    metric: str | None = None
    """The evaluation metric (a reward name or import path); None: the first reward."""
    regex: str | None = None
    """Pattern of the ``regex`` reward."""
    tests_field: str = "tests"
    """Field holding the ``code`` reward's tests (a list of snippets, or one)."""
    code_timeout: float = 10.0
    """Wall-clock seconds per program of the ``code`` reward."""
    allow_weak_isolation: bool = False
    """Let the ``code`` reward run where programs could signal other processes of this user."""
    workers: int = 0
    """Parallel math_verify checks and code programs; 0: one per CPU core."""
    lengths: list[int] | None = None
    """Generation lengths (the first trains); None: direct style the longest answer + 1, rounded up to
    a multiple of 8 (128 without answers); chat style 256."""
    mapping: dict[str, Any] = field(default_factory=dict, init=False)
    """Recorded: the fields read as prompt, answer and id."""
    files: dict[str, str] = field(default_factory=dict, init=False)
    """Recorded: sha256 of every data file read."""
    reward_functions: list[dict[str, Any]] = field(default_factory=list, init=False)
    """Recorded: each reward's name, import path, source sha256 and weight."""
    metric_function: dict[str, Any] = field(default_factory=dict, init=False)
    """Recorded: the metric's name, import path and source sha256."""

    def __post_init__(self):
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]
        if self.rewards is not None and not self.rewards:
            raise ValueError("rewards must name at least one reward (or null = exact_match)")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction > 1.0:
            raise ValueError("validation_fraction + test_fraction must be at most 1")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards or ["exact_match"]):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} weights for "
                             f"{len(self.rewards or ['exact_match'])} rewards")
        if self.code_timeout <= 0 or self.workers < 0:
            raise ValueError("need code_timeout > 0 and workers >= 0")
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 1):
            raise ValueError(f"lengths must be a non-empty list of positive lengths (or null), got {self.lengths}")


# -- reading ----------------------------------------------------------------------------------------

def _load_spec(path: Path) -> dict[str, Any]:
    """A YAML spec's settings, its relative data path and reward files rebased on its folder."""
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"data spec {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"data spec {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UsageError(f"data spec {str(path)!r} is not text (not UTF-8); a spec is a YAML mapping of task settings") from None
    except OSError as exc:
        raise UsageError(f"data spec {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(spec, dict) or not spec.get("path"):
        raise UsageError(f"data spec {str(path)!r} must be a mapping of task settings naming the data (path: FILE)")
    valid = [f.name for f in dataclasses.fields(DataConfig) if f.init and f.name != "spec"]
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise UsageError(f"data spec {str(path)!r}: unknown setting {unknown[0]!r}; valid: {', '.join(valid)}")

    def rebase(p: Any) -> Any:
        if not isinstance(p, str) or Path(p).expanduser().is_absolute():
            return p
        return str(path.parent / p)

    spec["path"] = rebase(spec["path"])
    for key in ("rewards", "metric"):
        items = spec.get(key)
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            location, sep, attr = item.rpartition(":") if isinstance(item, str) else ("", "", "")
            if sep and location.endswith(".py"):
                fixed = f"{rebase(location)}:{attr}"
                if isinstance(items, list):
                    items[i] = fixed
                else:
                    spec[key] = fixed
    return spec


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in BUILDERS and not p.name.startswith("."))


def _is_named(path: Path, names: tuple[str, ...]) -> bool:
    stem = path.name[: -len(path.suffix)]
    return any(stem == n or stem.startswith((f"{n}-", f"{n}_", f"{n}.")) for n in names)


def locate(path: str) -> tuple[dict[str, list[Path]], list[Path]]:
    """``(files per split, files of one pool)``: a folder's or a ``{split}`` path's split files, else
    the file (or the folder's files) to split by fractions."""
    if "{split}" in path:
        found = {}
        for split, names in SPLIT_NAMES.items():
            for name in names:
                candidate = Path(path.replace("{split}", name)).expanduser()
                if candidate.is_file():
                    found[split] = [candidate]
                    break
        if not found:
            raise UsageError(f"data path {path!r}: no file for any split (e.g. {path.replace('{split}', 'train')})")
        return found, []
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"data file {path!r} does not exist")
    if p.is_file():
        if p.suffix not in BUILDERS:
            raise UsageError(f"data file {path!r} is not a {', '.join(BUILDERS)} file (or a .yaml spec)")
        return {}, [p]
    files = _data_files(p)
    if not files:
        raise UsageError(f"data folder {path!r} holds no {', '.join(BUILDERS)} files")
    found = {split: [f for f in files if _is_named(f, names)] for split, names in SPLIT_NAMES.items()}
    found = {split: fs for split, fs in found.items() if fs}
    return (found, []) if found else ({}, files)


@functools.lru_cache(maxsize=8)
def _read_cached(files: tuple[str, ...], digests: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """Rows of ``files`` (keyed by content too: the task is built twice per run, the data read once)."""
    import datasets

    paths = [Path(f) for f in files]
    builders = {BUILDERS[p.suffix] for p in paths}
    if len(builders) != 1:
        raise UsageError(f"mixed file types in {', '.join(files)}")
    builder = builders.pop()
    kwargs: dict[str, Any] = {}
    if builder == "csv":  # every cell as text, as written: no "007" -> 7, no empty cell -> NaN
        with open(paths[0], newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}), "keep_default_na": False}
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with no_usage_ping():  # local files: no request to the Hub at all
            rows = datasets.load_dataset(builder, data_files=list(files), split="train", **kwargs).to_list()
    except Exception as exc:  # a malformed file: say which, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read {', '.join(files)}: {reason}") from None
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    if not rows:
        raise UsageError(f"{', '.join(files)} holds no rows")
    return tuple(rows)


def _messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _text(value: Any) -> str:
    """A prompt as plain text: chat messages' contents joined by blank lines."""
    if _messages(value):
        return "\n\n".join(str(m["content"]) for m in value)
    return str(value)


def _split_indices(n: int, fractions: dict[str, float], rng) -> dict[str, list[int]]:
    """Rows 0..n-1 dealt into the held-out splits (``round(fraction * n)`` each, at least 1 for a
    positive fraction) from one seeded shuffle; ``train`` gets the rest. Each in file order."""
    order = list(range(n))
    rng.shuffle(order)
    out, start = {}, 0
    for split, fraction in fractions.items():
        size = max(1, round(fraction * n)) if fraction > 0 else 0
        out[split] = sorted(order[start:start + size])
        start += size
    if start > n:
        raise UsageError(f"{n} rows are too few to hold out {', '.join(f'{s} {f:g}' for s, f in fractions.items())}")
    out["train"] = sorted(order[start:])
    return out


class DataTask(Task):
    """Examples from the user's file; rewards summed with weights; the metric is one reward."""

    Config = DataConfig
    config: DataConfig

    @classmethod
    def params_for(cls, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Task params of ``--task data:PATH`` (or ``--task data`` with ``task.path``): a YAML spec's
        settings, then the explicit ones (recipe, ``--set``) over them."""
        params = dict(params)
        path = params.get("path") or name.partition(":")[2]
        if not path:
            raise UsageError("the data task needs the data: --task data:PATH or --set task.path=PATH (see docs/data.md)")
        params["path"] = path
        if Path(path).suffix in SPEC_SUFFIXES:
            params = {**_load_spec(Path(path).expanduser()), **{k: v for k, v in params.items() if k != "path"},
                      "spec": path}
        for key in TEMPLATES:  # `--set task.template={question}` reads as the YAML mapping {question: null}
            value = params.get(key)
            if isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None:
                params[key] = f"{{{next(iter(value))}}}"
        return params

    def __init__(self, config: DataConfig | None = None):
        super().__init__(config)
        c = self.config
        if not c.path:
            raise UsageError("the data task needs the data: --task data:PATH or --set task.path=PATH (see docs/data.md)")
        found, pool = locate(c.path)
        sources = {split: self._rows(files) for split, files in found.items()}
        if pool:
            sources["pool"] = self._rows(pool)
        self._map_fields(sources, found or {"pool": pool})
        self._examples = self._split(sources)
        self._check_ids()
        specs = c.rewards or ["exact_match"]
        weights = c.reward_weights or [1.0] * len(specs)
        self._rewards: list[tuple[Reward, float]] = list(zip((resolve(s, c) for s in specs), weights))
        self._metric = self._rewards[0][0] if c.metric in (None, specs[0]) else resolve(c.metric, c)
        for reward in [r for r, _ in self._rewards] + [self._metric]:
            self._check_reward_inputs(reward)
        for key in TEMPLATES:
            if getattr(c, key) is not None:
                self._check_template(key, getattr(c, key))
        c.reward_functions = [{**r.record(), "weight": w} for r, w in self._rewards]
        self.no_train_hint = ""  # why train is empty, for the one line a training run or the tiny model gives
        if not self._examples["train"] and sources.get("pool"):
            self.no_train_hint = (f"its {len(sources['pool'])} rows leave none after the test and validation fractions; "
                                  "add rows, or lower task.test_fraction and task.validation_fraction")
        elif not self._examples["train"]:
            files = ", ".join(sorted(str(p) for fs in [*found.values(), pool] for p in fs)) or "none"
            self.no_train_hint = (f"files read: {files}; name the training file train.jsonl (or .json/.csv/.parquet), "
                                  "or pass one file to split by test_fraction and validation_fraction")
        c.metric_function = self._metric.record()
        # The run's name in results, compare columns and the tiny model's cache: data:NAME@HASH of what is evaluated.
        self.name = f"data:{self._short_name()}@{self._fingerprint()[:8]}"

    # -- building -------------------------------------------------------------------------------
    def _rows(self, files: list[Path]) -> list[dict[str, Any]]:
        digests = tuple(file_sha256(f) for f in files)
        self.config.files.update({str(f): d for f, d in zip(files, digests)})
        return list(_read_cached(tuple(str(f) for f in files), digests))

    def _map_fields(self, sources: dict[str, list[dict]], files: dict[str, list[Path]]) -> None:
        """Resolve prompt / answer / id fields on the first source and check them on every source."""
        c = self.config
        first = next(iter(sources.values()))[0]

        def pick(value: str | None, candidates: tuple[str, ...]) -> str | None:
            return value or next((name for name in candidates if name in first), None)

        prompt = pick(c.prompt_field, PROMPT_FIELDS)
        if prompt is None:
            raise UsageError(f"{_where(files)} has no prompt field ({', '.join(PROMPT_FIELDS)}); its fields: "
                             f"{', '.join(first)}; set task.prompt_field=NAME")
        answer = pick(c.answer_field, ANSWER_FIELDS)
        from_turn = answer is None and _messages(first.get(prompt)) and first[prompt][-1].get("role") == "assistant"
        ids = c.id_field if c.id_field is not None else ("id" if "id" in first else "")
        for source, rows in sources.items():
            have = rows[0].keys()
            for setting, name in (("prompt_field", prompt), ("answer_field", answer), ("id_field", ids)):
                if name and name not in have:
                    raise UsageError(f"task.{setting}={name!r}: {_where({source: files[source]})} has no such field; "
                                     f"its fields: {', '.join(have)}")
        self._fields = {"prompt": prompt, "answer": answer, "id": ids, "answer_from_last_turn": from_turn}
        c.mapping = {"prompt": prompt, "answer": f"{prompt} (last assistant turn)" if from_turn else answer,
                     "id": ids or "row index"}

    def _example(self, row: dict[str, Any], source: str, index: int) -> Example:
        f = self._fields
        where = f"{source} row {index}"
        prompt, answer = row[f["prompt"]], row.get(f["answer"]) if f["answer"] else None
        if isinstance(prompt, list):
            if not _messages(prompt):
                raise UsageError(f"{where}: field {f['prompt']!r} is a list but not chat messages (role/content)")
            if f["answer_from_last_turn"] and prompt[-1].get("role") == "assistant":
                prompt, answer = prompt[:-1], prompt[-1]["content"]
        elif prompt is None:
            raise UsageError(f"{where}: field {f['prompt']!r} is empty")
        else:
            prompt = str(prompt)
        if answer is not None:
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise UsageError(f"{where}: answer field {f['answer']!r} holds {type(answer).__name__}; answers must be text or numbers")
            answer = str(answer)
        if f["id"]:
            if row.get(f["id"]) is None:
                raise UsageError(f"{where}: id field {f['id']!r} is empty")
            example_id = str(row[f["id"]])
        else:
            example_id = f"{source}-{index}"
        return {**row, "id": example_id, "prompt": prompt, "answer": answer}

    def _split(self, sources: dict[str, list[dict]]) -> dict[str, list[Example]]:
        """Splits from their files; missing validation / test held out of the train file (or of the
        one pool) by a seeded shuffle."""
        c = self.config
        rng = keyed_random(c.seed, "data", "split")
        out: dict[str, list[Example]] = {}
        if "pool" in sources:
            rows = sources["pool"]
            for split, idx in _split_indices(len(rows), {"test": c.test_fraction, "validation": c.validation_fraction}, rng).items():
                out[split] = [self._example(rows[i], "row", i) for i in idx]
            return out
        for split, rows in sources.items():
            out[split] = [self._example(row, split, i) for i, row in enumerate(rows)]
        missing = {s: getattr(c, f"{s}_fraction") for s in ("test", "validation") if s not in sources}
        if "train" in sources and missing:
            idx = _split_indices(len(sources["train"]), missing, rng)
            out.update({split: [out["train"][i] for i in idx[split]] for split in (*missing, "train")})
        return {split: out.get(split, []) for split in self.splits}

    def _check_ids(self) -> None:
        seen: dict[str, str] = {}
        for split, examples in self._examples.items():
            for ex in examples:
                if ex["id"] in seen:
                    raise UsageError(f"id {ex['id']!r} appears twice ({seen[ex['id']]} and {split}); ids must be unique "
                                     "(they key sampler noise): fix the id field, or --set task.id_field= for row ids")
                seen[ex["id"]] = split

    def _all(self) -> list[Example]:
        return [ex for split in self.splits for ex in self._examples[split]]

    def _check_reward_inputs(self, reward: Reward) -> None:
        """Every example has what the reward reads: a reference answer (that parses as a number for
        numeric_match), or tests for code."""
        from .gsm8k import parse_number

        for ex in self._all():
            if reward.needs_answer and ex["answer"] is None:
                raise UsageError(f"reward {reward.name} needs reference answers; example {ex['id']!r} has none "
                                 f"(answer field: {self.config.mapping['answer']}); set task.answer_field=NAME")
            if reward.spec == "numeric_match" and parse_number(ex["answer"]) is None:
                raise UsageError(f"reward numeric_match: the answer of example {ex['id']!r} ({ex['answer']!r}) is no number")
            if reward.spec == "code":
                tests = ex.get(self.config.tests_field)
                if not (isinstance(tests, str) or (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests))):
                    raise UsageError(f"reward code: example {ex['id']!r} has no tests in field {self.config.tests_field!r} "
                                     "(a list of test snippets, or one); set task.tests_field=NAME")

    def _check_template(self, key: str, template: str) -> None:
        names = set(self._all()[0]) if self._all() else {"prompt", "answer", "id"}
        try:
            placeholders = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise UsageError(f"task.{key}={template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
        for name in placeholders:
            if not name.isidentifier():
                raise UsageError(f"task.{key}={template!r}: placeholder {{{name}}} must be a field name")
            if name not in names:
                raise UsageError(f"task.{key}={template!r}: the data has no field {name!r}; fields: {', '.join(sorted(names))}")

    def _short_name(self) -> str:
        c = self.config
        if c.dataset:
            name = c.dataset
        else:
            source = Path(c.spec or c.path.replace("{split}", ""))
            name = source.name if source.is_dir() else source.stem
            name = name.strip("-_.") or "data"
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)

    def _fingerprint(self) -> str:
        """sha256 of what evaluation depends on: the held-out examples, the prompt settings, the metric."""
        c = self.config
        metric = self._metric  # a built-in by name (its code is versioned with the package), a user's by source hash
        evaluated = {"examples": {s: self._examples[s] for s in ("validation", "test")},
                     "prompt": {k: getattr(c, k) for k in TEMPLATES},
                     "metric": metric.target if metric.spec in BUILTINS else [metric.target, metric.sha256],
                     "reward_settings": {"regex": c.regex, "tests_field": c.tests_field, "code_timeout": c.code_timeout}}
        return hashlib.sha256(json.dumps(evaluated, sort_keys=True, default=str).encode()).hexdigest()

    # -- the Task contract ----------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The path the task was given (the spec's, if any): what rebuilds it."""
        return self.config.spec or self.config.path

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        return list(self._examples[split])

    def _render(self, template: str, example: Example, prompt: str) -> str:
        return template.format_map({**example, "prompt": prompt})

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        c = self.config
        if style == "direct":
            return self._render(c.template, example, _text(example["prompt"]))
        user = c.user_template or c.template
        if isinstance(example["prompt"], list):
            messages = [dict(m) for m in example["prompt"]]
            last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last is not None:
                messages[last]["content"] = self._render(user, example, str(messages[last]["content"]))
        else:
            messages = [{"role": "user", "content": self._render(user, example, example["prompt"])}]
        if c.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": c.system})
        return messages

    def rewards(self, examples: list[Example], completions: list[str], style: str) -> list[float]:
        """Weighted sum of the rewards (each batch-parallel where it is slow)."""
        check_style(style)
        total = [0.0] * len(completions)
        for reward, weight in self._rewards:
            for i, value in enumerate(reward.batch(examples, completions, style)):
                total[i] += weight * value
        return total

    def reward(self, example: Example, completion: str, style: str) -> float:
        return self.rewards([example], [completion], style)[0]

    def scores(self, examples: list[Example], completions: list[str], style: str) -> list[dict[str, float]]:
        check_style(style)
        return [{self._metric.name: v} for v in self._metric.batch(examples, completions, style)]

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        return self.scores([example], [completion], style)[0]

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        c = self.config
        if c.lengths:
            lengths = tuple(c.lengths)
        elif style == "chat":
            lengths = (256,)
        else:
            answers = [len(ex["answer"]) for ex in self._all() if ex["answer"] is not None]
            lengths = (-(-(max(answers) + 1) // 8) * 8,) if answers else (128,)
        prompt = (f"template {c.template!r}" if style == "direct" else
                  f"user turn {c.user_template or c.template!r}" + (f", system {c.system!r}" if c.system else ""))
        fields = ", ".join(f"{k}={v}" for k, v in c.mapping.items())
        training = " + ".join(f"{w:g} x {r.name}" for r, w in self._rewards)
        return EvalProtocol(lengths=lengths, primary_metric=self._metric.name, split="test", shots=0,
                            prompt=f"{prompt}; fields {fields}",
                            parser=(f"answer region: the whole completion (direct), the last <answer> block else all "
                                    f"(chat); metric {self._metric.name}: {self._metric.description}; "
                                    f"training reward {training}"))

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if example["answer"] is None:
            raise UsageError(f"example {example['id']!r} has no reference answer, which the tiny model pretrains on; "
                             "give the data an answer field (task.answer_field=NAME) or use another model")
        return example["answer"]


def _where(files: dict[str, list[Path]]) -> str:
    return ", ".join(str(f) for fs in files.values() for f in fs)

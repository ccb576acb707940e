"""A minimal third-party task: reverse a string of digits."""
import random
from dataclasses import dataclass

from dllm_rl.task import EvalProtocol, Task, TaskConfig


@dataclass
class ReverseConfig(TaskConfig):
    digits: int = 4
    train_size: int = 500
    test_size: int = 50


class Reverse(Task):
    """Reverse a string of digits (example plugin task); reward: fraction of digits in place."""

    Config = ReverseConfig
    presets = [  # the tiny model's 1,500 default pretraining steps would solve it before RL starts
        {"match": {"model": "tiny"}, "set": {"pretrain.steps": 150}},  # base: 48% of test strings (300 steps: 100%)
    ]

    def examples(self, split):
        size = {"train": self.config.train_size}.get(split, self.config.test_size)
        rng = random.Random(f"{self.config.seed}-{split}")
        return [{"id": f"reverse-{split}-{i}", "text": "".join(rng.choice("0123456789") for _ in range(self.config.digits))}
                for i in range(size)]

    def prompt(self, example, style):
        if style == "chat":
            return [{"role": "user", "content": f"Reverse {example['text']}. Answer in <answer></answer>."}]
        return example["text"] + "="

    def _answer(self, completion, style):
        if style == "chat":
            return completion.split("<answer>")[-1].split("</answer>")[0].strip()
        return completion.strip()

    def reward(self, example, completion, style):
        target, got = example["text"][::-1], self._answer(completion, style)
        return sum(a == b for a, b in zip(target, got)) / len(target)

    def score(self, example, completion, style):
        return {"accuracy": float(self._answer(completion, style) == example["text"][::-1])}

    def protocol(self, style):
        return EvalProtocol(lengths=(8,) if style == "direct" else (64,))

    def reference(self, example, style):
        answer = example["text"][::-1]
        return answer if style == "direct" else f"<answer>{answer}</answer>"

"""Shared helpers of the benchmark scripts: the two CPU-sized model shapes, timing, machine load
and result files (JSON under results/benchmarks/, markdown sections for BENCHMARKS.md)."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.models.llada import LLaDAConfig, LLaDAModelLM
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig
from dllm_rl.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"

# Shapes: the tiny model at the default pretrain sizes, and a CPU-sized config of the LLaDA
# architecture (same code path as LLaDA-8B: RMSNorm, SwiGLU, RoPE, untied head).
MODELS = {
    "tiny": dict(batch=16, prompt=32, gen_length=64, block_length=32),
    "llada-cpu": dict(batch=8, prompt=32, gen_length=64, block_length=32),
}


def build_model(name: str, seed: int = 0) -> ModelAdapter:
    """A randomly initialised model (speed does not depend on the weights) wrapped in an adapter."""
    torch.manual_seed(seed)  # benchmark process, not library code: model init only
    if name == "tiny":
        c = TinyDLMConfig()  # the pretrain defaults: hidden 128, 3 layers, 4 heads, MLP 256
        model = TinyDLM(c)
        model.reset_parameters(torch.Generator().manual_seed(seed))
        ids = dict(mask_id=c.mask_token_id, eos_id=c.eos_token_id, pad_id=c.pad_token_id, vocab=c.vocab_size)
    elif name == "llada-cpu":
        c = LLaDAConfig(d_model=256, n_heads=4, n_layers=4, mlp_hidden_size=1024, vocab_size=1024, embedding_size=1024,
                        max_sequence_length=512, mask_token_id=1023, eos_token_id=1022, pad_token_id=1022)
        model = LLaDAModelLM(c)
        ids = dict(mask_id=1023, eos_id=1022, pad_id=1022, vocab=1022)
    else:
        raise SystemExit(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    model.eval()
    vocab = ids.pop("vocab")
    adapter = ModelAdapter(model=model, tokenizer=None, name=name, **ids)
    adapter.vocab = vocab  # ordinary tokens are ids [4, vocab) for both models
    return adapter


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_prompts(adapter: ModelAdapter, n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, adapter.vocab, (n, length), generator=g).tolist()


def timed(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "load_avg_1m": round(load1, 2), "load_avg_5m": round(load5, 2),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(name: str, data) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_json(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

"""One-GPU benchmark of LLaDA-8B and Dream-7B at the ESPO recipes' shapes (prompt 110 + L 256), with
random weights (speed does not depend on them). Per model it measures:

  forward   no-grad bf16 forward tokens/s (32 rows, the recipe's 96-row rollout batch, the rollout rows);
  rollout   ``generate`` at temperature 0.9 with the recipe's blocks and remasking, a reduced number of
            denoising steps: tokens/s, its ratio to the forward-only bound (time of generate over
            NFE x one forward of the same shape with the head on one block, the model work the
            sampler asks for; 1.0 = bookkeeping is free) and the non-model overhead in ms per row per step;
  espo      one ESPO update on one micro-batch of 8 rows (LoRA r128, gradient checkpointing, mu=8,
            M=2 coupled, beta 1e-3): prepare, loss+backward and AdamW step seconds, peak GPU memory;

then extrapolates a full recipe step (96 rollouts, 128 steps, 12 micro-batches, mu=8) and prints it
next to the docs/models.md estimate. JSON keeps ``measured`` and ``extrapolated`` apart.

    PYTHONPATH=. python3 benchmarks/gpu.py --out results/benchmarks/gpu.json     # one H100/H200, < 8 min
    PYTHONPATH=. python3 benchmarks/gpu.py --smoke --out /tmp/gpu.json            # tiny models on CPU
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dllm_rl.algorithms.espo import ESPO, ESPOConfig  # noqa: E402
from dllm_rl.diffusion.sampler import SamplerConfig, generate, left_pad  # noqa: E402
from dllm_rl.models.adapter import ModelAdapter  # noqa: E402
from dllm_rl.models.dream import DreamConfig, DreamModel  # noqa: E402
from dllm_rl.models.families import NATIVE  # noqa: E402
from dllm_rl.models.layers import RMSNorm  # noqa: E402
from dllm_rl.models.llada import LLaDAConfig, LLaDAModelLM  # noqa: E402
from dllm_rl.models.lora import apply_lora  # noqa: E402
from dllm_rl.atomic import atomic_write_text  # noqa: E402
from dllm_rl.rl.rollout import RolloutBatch  # noqa: E402
from dllm_rl.trainer import disable_dropout  # noqa: E402

BUDGET_S = 450  # skip what is left after 7.5 minutes: the whole run must stay under 8
HARD_LIMIT_S = 480  # ... and a part whose earlier run would not finish before 8 minutes
GB = 1e9
# The recipes (dllm_rl/recipes/*-espo-countdown.yaml): what a full step is extrapolated to.
RECIPE = dict(rows=96, steps=128, micro_batch=8, mu=8, num_mc=2, beta=1e-3, lr=3e-6, grad_clip=0.2,
              lora_r=128, lora_alpha=64, lora_dropout=0.05, temperature=0.9)
SAMPLING = {"llada": dict(block_length=32, remasking="low_confidence"),
            "dream": dict(block_length=256, remasking="entropy")}
# docs/models.md, "Recipes and expected cost per step (ESTIMATE)", countdown rows, H100 80GB.
DOCS_ESTIMATE = {"llada": dict(step_min=7, peak_gb=27), "dream": dict(step_min=6, peak_gb=26)}
# Measured shapes. Real: prompts of 100-110 tokens left-padded to 110 (real batches are padded, so
# attention runs its masked kernel as in training). Smoke: same code path, tiny models on CPU.
REAL = dict(prompt=110, gen_length=256, forward_rows=32, rollout_rows=8, rollout_steps=8, micro_batch=8,
            lora_r=128, lora_alpha=64, dtype=torch.bfloat16)
SMOKE = dict(prompt=12, gen_length=32, forward_rows=4, rollout_rows=2, rollout_steps=4, micro_batch=2,
             lora_r=8, lora_alpha=16, dtype=torch.float32, block_length={"llada": 16, "dream": 32})
CONFIG_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size", "hidden_size",
               "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
               "mask_token_id", "eos_token_id", "pad_token_id")


def configs(smoke: bool) -> dict:
    """The real architectures' configs, or tiny ones of the same classes (mask/eos/pad inside the vocab)."""
    if not smoke:
        return {"llada": LLaDAConfig(), "dream": DreamConfig()}
    return {"llada": LLaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=512,
                                 embedding_size=512, mask_token_id=511, eos_token_id=510, pad_token_id=510),
            "dream": DreamConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, mask_token_id=511,
                                 pad_token_id=510, bos_token_id=510, eos_token_id=510)}


# -- device helpers -----------------------------------------------------------------------------

def now(dev: torch.device) -> float:
    """Wall clock after the device has finished its queued work."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def timed(fn, dev, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = now(dev)
        fn()
        times.append(now(dev) - start)
    return statistics.median(times)


def gpu_gb(dev, peak: bool = False, reset: bool = False) -> float | None:
    """Allocated (or peak allocated) GPU memory; ``reset`` starts a new peak. None on CPU."""
    if dev.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / GB


def rss_gb() -> float:
    """Current resident host memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


# -- model and inputs ---------------------------------------------------------------------------

def init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Normal(0, 0.02) Linear/Embedding weights, zero biases, unit RMSNorm scales, drawn on the model's
    device; raises if any parameter or buffer is left uninitialised by ``to_empty``."""
    done = set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.02, generator=gen)
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            else:
                continue
            done.add(id(m.weight))
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
                done.add(id(m.bias))
    left = [n for n, p in model.named_parameters() if id(p) not in done] + [n for n, _ in model.named_buffers()]
    if left:
        raise RuntimeError(f"uninitialised after to_empty: {', '.join(left[:5])}")


def build(name: str, config, dev: torch.device, dtype: torch.dtype, state: dict) -> dict:
    """The native model built on the meta device, materialised on ``dev`` in ``dtype`` with a seeded init,
    wrapped in an adapter (``state["adapter"]``; Dream's logits shifted)."""
    start = now(dev)
    with torch.device("meta"):
        model = (LLaDAModelLM if name == "llada" else DreamModel)(config).to(dtype)
    model.to_empty(device=dev)
    init_weights(model, torch.Generator(device=dev).manual_seed(0))
    state["adapter"] = ModelAdapter(model=model.eval(), tokenizer=None, mask_id=config.mask_token_id,
                                    eos_id=config.eos_token_id, pad_id=config.pad_token_id,
                                    shift_logits=name == "dream", name=name)
    return {"params": sum(p.numel() for p in model.parameters()), "dtype": str(dtype), "seconds": now(dev) - start}


def random_prompts(n: int, width: int, vocab: int) -> list[list[int]]:
    """``n`` prompts of ordinary tokens (below every special id), lengths from 10 under ``width`` up to it."""
    g = torch.Generator().manual_seed(0)
    low = max(1, width - 10)
    return [torch.randint(4, vocab, (int(torch.randint(low, width + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def rollout_batch(prompts, gen_length: int, vocab: int, dev) -> RolloutBatch:
    """One micro-batch of a 96-row rollout batch (rows 0..n-1) with random completions and nonzero
    advantages, on ``dev``."""
    n, g = len(prompts), torch.Generator().manual_seed(1)
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    rewards = torch.rand(n, generator=g)
    rows = torch.arange(n)
    batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                         completion_ids=torch.randint(4, vocab, (n, gen_length), generator=g),
                         valid_mask=torch.ones(n, gen_length, dtype=torch.bool), rewards=rewards,
                         advantages=rewards - rewards.mean(), rows=rows, groups=rows // 6,
                         commit_step=torch.zeros(n, gen_length, dtype=torch.long),
                         sample_logprobs=torch.zeros(n, gen_length), step=0, num_rows=RECIPE["rows"],
                         num_groups=RECIPE["rows"] // 6, total_valid_tokens=n * gen_length)
    return batch.to(dev)  # as the trainer does: the batch on the model's device


# -- measurements -------------------------------------------------------------------------------

def measure_forward(adapter, prompts, s, dev, block: int) -> dict:
    """No-grad forward tokens/s (median of 3 after one warm-up) at several row counts, on the sampler's
    first input: left-padded prompts, then L mask tokens; the output head on every position, and (the
    sampler's own passes) on the first block of the completion only."""
    out, length = {}, s["gen_length"]
    for rows in (s["forward_rows"], RECIPE["rows"], s["rollout_rows"]):
        ids, attn = left_pad(prompts[:rows], adapter.pad_id)
        tp = ids.shape[1]
        ids = torch.cat([ids, torch.full((rows, length), adapter.mask_id)], 1).to(dev)
        attn = torch.cat([attn, torch.ones(rows, length, dtype=torch.long)], 1).to(dev)
        for key, keep in ((f"rows_{rows}", 0), (f"rows_{rows}_block", slice(tp, tp + block))):
            with torch.no_grad():
                sec = timed(lambda: adapter.logits(ids, attn, logits_to_keep=keep), dev)
            out[key] = {"rows": rows, "tokens": ids.shape[1], "head_positions": ids.shape[1] if keep == 0 else block,
                        "seconds": sec, "tokens_per_s": ids.numel() / sec}
    return out


def measure_rollout(adapter, prompts, s, dev, name: str, sampling: dict, forward: dict) -> dict:
    """One timed ``generate`` call and its ratio to NFE x a plain forward of the same shape."""
    rows = s["rollout_rows"]
    cfg = SamplerConfig(gen_length=s["gen_length"], steps=s["rollout_steps"], temperature=RECIPE["temperature"],
                        block_length=s.get("block_length", {}).get(name, sampling["block_length"]), remasking=sampling["remasking"])
    gens = [torch.Generator().manual_seed(i) for i in range(rows)]
    rss0, peak0, alloc0 = rss_gb(), peak_rss_gb(), gpu_gb(dev, reset=True)
    start = now(dev)
    out = generate(adapter.logits, prompts[:rows], adapter.mask_id, adapter.pad_id, cfg, gens)
    seconds = now(dev) - start
    # the bound: NFE forward passes with the head on one block, as the sampler asks of the model
    t_fwd, width = forward[f"rows_{rows}_block"]["seconds"], forward[f"rows_{rows}_block"]["tokens"]
    overhead = (seconds - out.nfe * t_fwd) / (out.nfe * rows)
    peak, host_peak = gpu_gb(dev, peak=True), peak_rss_gb()
    host = (host_peak - rss0) / rows if host_peak > peak0 else None  # None: below an earlier peak, unknown
    return {"rows": rows, "gen_length": cfg.gen_length, "steps": cfg.num_steps, "block_length": cfg.block_length,
            "remasking": cfg.remasking, "temperature": cfg.temperature, "nfe": out.nfe, "seconds": seconds,
            "tokens_per_s": rows * width * out.nfe / seconds, "generated_tokens_per_s": rows * cfg.gen_length / seconds,
            "forward_only_s": out.nfe * t_fwd, "ratio_to_forward_bound": seconds / (out.nfe * t_fwd),
            "overhead_ms_per_row_step": 1e3 * overhead,
            "gpu_peak_gb": peak, "gpu_gb_per_row": None if peak is None else (peak - alloc0) / rows,
            "gpu_before_gb": alloc0, "host_peak_rss_gb": host_peak, "host_gb_per_row": host}


def enable_checkpointing(model) -> None:
    """Non-reentrant gradient checkpointing, under whichever name this transformers version has."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def measure_espo(adapter, prompts, s, dev, name: str, vocab: int) -> dict:
    """prepare, then loss+backward and AdamW step at iteration 1 (cached old policy) twice (the first
    warms up and allocates the optimizer state; the second is reported), on one micro-batch."""
    enable_checkpointing(adapter.model)
    torch.manual_seed(0)  # peft draws LoRA A's initial values from the global generator
    adapter.model = apply_lora(adapter.model, NATIVE[name]().lora_targets, s["lora_r"], s["lora_alpha"],
                               RECIPE["lora_dropout"]).train()
    disable_dropout(adapter.model)  # as the trainer does by default (model.disable_dropout)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    algo = ESPO(ESPOConfig(mu=RECIPE["mu"], num_mc=RECIPE["num_mc"], coupled=True, beta=RECIPE["beta"]), seed=0)
    batch = rollout_batch(prompts[:s["micro_batch"]], s["gen_length"], vocab, dev)
    opt = torch.optim.AdamW(params, lr=RECIPE["lr"], betas=(0.9, 0.99), weight_decay=0.01)
    alloc0 = gpu_gb(dev, reset=True)
    start = now(dev)
    cache = algo.prepare(adapter, batch, s["micro_batch"])
    prepare_s = now(dev) - start
    runs = []
    for _ in range(2):
        start = now(dev)
        opt.zero_grad(set_to_none=True)
        loss, _ = algo.loss(adapter, batch, cache, 1)
        loss.backward()
        mid = now(dev)
        norm = torch.nn.utils.clip_grad_norm_(params, RECIPE["grad_clip"])
        opt.step()
        runs.append((mid - start, now(dev) - mid, loss.item(), norm.item()))
    return {"rows": s["micro_batch"], "lora_params": sum(p.numel() for p in params), "prepare_s": prepare_s,
            "loss_backward_s": runs[1][0], "optimizer_step_s": runs[1][1], "step_s": runs[1][0] + runs[1][1],
            "first_loss_backward_s": runs[0][0], "first_optimizer_step_s": runs[0][1], "loss": runs[1][2], "grad_norm": runs[1][3],
            "gpu_before_gb": alloc0, "gpu_peak_gb": gpu_gb(dev, peak=True)}


def extrapolate(m: dict, name: str) -> dict:
    """A full recipe step from the measurements: rollout (128 steps of a 96-row forward plus the measured
    per-row overhead), prepare on 12 micro-batches, mu x (12 loss+backward + one optimizer step)."""
    fwd, roll, espo = m["forward"][f"rows_{RECIPE['rows']}"], m["rollout"], m["espo"]
    micro = math.ceil(RECIPE["rows"] / espo["rows"])
    rollout = RECIPE["steps"] * (fwd["seconds"] + RECIPE["rows"] * roll["overhead_ms_per_row_step"] / 1e3)
    prepare = micro * espo["prepare_s"]
    updates = RECIPE["mu"] * (micro * espo["loss_backward_s"] + espo["optimizer_step_s"])
    per_row = roll["gpu_gb_per_row"]
    return {"rollout_s": rollout, "rollout_forward_only_s": RECIPE["steps"] * fwd["seconds"], "prepare_s": prepare,
            "updates_s": updates, "step_s": rollout + prepare + updates, "step_min": (rollout + prepare + updates) / 60,
            "rollout_gpu_peak_gb": None if per_row is None else roll["gpu_before_gb"] + RECIPE["rows"] * per_row,
            "rollout_host_gb": None if roll["host_gb_per_row"] is None else RECIPE["rows"] * roll["host_gb_per_row"],
            "docs_estimate": {**DOCS_ESTIMATE[name], "source": "docs/models.md (ESTIMATE, H100, countdown)"}}


# -- driver -------------------------------------------------------------------------------------

def summary(name: str, part: str, r: dict) -> str:
    """One table line of a measurement."""
    if "skipped" in r or "error" in r:
        return f"{name:6} {part:9} {r.get('skipped') or r.get('error')}"
    if part == "build":
        return f"{name:6} {part:9} {r['params'] / 1e9:.2f} B parameters, {r['dtype']}, {r['seconds']:.1f} s"
    if part == "forward":
        return f"{name:6} {part:9} " + "  ".join(
            f"{v['rows']}x{v['tokens']} (head on {v['head_positions']}): {v['tokens_per_s']:,.0f} tok/s ({v['seconds']:.3f} s)"
            for v in r.values())
    if part == "rollout":
        return (f"{name:6} {part:9} {r['rows']} rows x {r['steps']} steps: {r['seconds']:.1f} s, {r['tokens_per_s']:,.0f} tok/s, "
                f"ratio to forward bound {r['ratio_to_forward_bound']:.2f}, overhead {r['overhead_ms_per_row_step']:.1f} ms/row/step")
    if part == "espo":
        gpu = "" if r["gpu_peak_gb"] is None else f", peak {r['gpu_peak_gb']:.1f} GB"
        return (f"{name:6} {part:9} {r['rows']} rows: prepare {r['prepare_s']:.2f} s, loss+backward {r['loss_backward_s']:.2f} s, "
                f"step {r['optimizer_step_s']:.3f} s{gpu}, loss {r['loss']:.4g}")
    d = r["docs_estimate"]
    gpu = "" if r["rollout_gpu_peak_gb"] is None else f", rollout GPU ~{r['rollout_gpu_peak_gb']:.0f} GB"
    host = "" if r["rollout_host_gb"] is None else f", host ~{r['rollout_host_gb']:.0f} GB"
    return (f"{name:6} {part:9} EXTRAPOLATED full step ~{r['step_min']:.1f} min (rollout {r['rollout_s'] / 60:.1f}, prepare "
            f"{r['prepare_s'] / 60:.1f}, updates {r['updates_s'] / 60:.1f}){gpu}{host}; "
            f"docs estimate ~{d['step_min']} min, ~{d['peak_gb']} GB")


def section(data: dict | None) -> str:
    """The BENCHMARKS.md section of ``results/benchmarks/gpu.json``; without one, says the GPU figures are estimates."""
    head = "## LLaDA-8B and Dream-7B on one GPU\n\n"
    if not data or data.get("smoke"):
        return (head + "**Not measured yet: the GPU figures in docs/models.md are estimates.** No GPU was available "
                "to the sessions that built this. `PYTHONPATH=. python3 benchmarks/gpu.py` (about 3-8 minutes on one "
                "H100) measures forward tokens/s, rollout tokens/s and the sampler's ratio to the forward-only bound, "
                "and one ESPO update with LoRA r=128 and gradient checkpointing (seconds, peak memory), and writes "
                "results/benchmarks/gpu.json, from which `benchmarks/run_all.py` fills this section.")
    rows = []
    for name, e in data["models"].items():
        m, x = e["measured"], e["extrapolated"].get("recipe_step", {})
        fwd, roll, espo = m.get("forward", {}), m.get("rollout", {}), m.get("espo", {})
        big = fwd.get(f"rows_{RECIPE['rows']}", {})
        rows.append([name, f"{big.get('tokens_per_s', float('nan')):,.0f}", f"{roll.get('tokens_per_s', float('nan')):,.0f}",
                     f"{roll.get('ratio_to_forward_bound', float('nan')):.2f}", f"{roll.get('overhead_ms_per_row_step', float('nan')):.1f}",
                     f"{espo.get('loss_backward_s', float('nan')):.2f}", f"{espo.get('gpu_peak_gb') or float('nan'):.1f}",
                     f"{x.get('step_min', float('nan')):.1f}", f"~{DOCS_ESTIMATE[name]['step_min']} min, ~{DOCS_ESTIMATE[name]['peak_gb']} GB"])
    return (head + f"Measured on **{data['device']}** ({data['timestamp']}, commit {str(data.get('git_commit'))[:8]}, torch "
            f"{data['versions']['torch']}), random {data['shapes']['dtype'].replace('torch.', '')} weights, prompt {data['shapes']['prompt']} + L "
            f"{data['shapes']['gen_length']}. The full-step column is extrapolated from the measured parts "
            "(`benchmarks/gpu.py`).\n\n" + _md(["model", f"forward tok/s ({RECIPE['rows']} rows)", "rollout tok/s",
                                                 "sampler / forward bound", "non-model ms / row / step",
                                                 "ESPO loss+backward s (8 rows)", "peak GB", "full step min (extrapolated)",
                                                 "docs/models.md estimate"], rows))


def _md(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def git_commit() -> str | None:
    """HEAD of the checkout, or None outside a git repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "gpu.json"))
    p.add_argument("--models", default="llada,dream")
    p.add_argument("--smoke", action="store_true", help="tiny models of both architectures on CPU (tests)")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    if not names or set(names) - set(SAMPLING):
        p.error(f"--models: comma-separated names from {', '.join(SAMPLING)}")
    if not a.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    import peft
    import transformers

    t0 = time.perf_counter()
    dev = torch.device("cpu" if a.smoke else "cuda")
    if a.smoke:
        torch.set_num_threads(1)  # tiny tensors: more threads only add overhead
    s, cfgs = (SMOKE if a.smoke else REAL), configs(a.smoke)
    result = {"schema": "dllm-rl/gpu-benchmark/v1", "smoke": a.smoke, "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_commit": git_commit(), "device": "cpu" if a.smoke else torch.cuda.get_device_name(),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                           "python": sys.version.split()[0]},
              "shapes": {**{k: str(v) if k == "dtype" else v for k, v in s.items()}, "sampling": SAMPLING},
              "recipe": RECIPE, "budget_s": BUDGET_S,
              "note": "models.*.measured: timed on this device; models.*.extrapolated: computed from those "
                      "measurements for a full recipe step (96 rollouts x 128 steps, 12 micro-batches, mu=8)",
              "models": {}}
    failed, took = False, {}
    print(f"device: {result['device']}  torch {torch.__version__}  shapes: prompt {s['prompt']} + L {s['gen_length']}", flush=True)
    for name in names:
        c, state = cfgs[name], {}
        entry = result["models"][name] = {"config": {k: v for k, v in c.to_dict().items() if k in CONFIG_KEYS},
                                          "measured": {}, "extrapolated": {}}
        m = entry["measured"]
        vocab = min(c.mask_token_id, c.eos_token_id, c.pad_token_id)  # ordinary tokens: [4, vocab)
        prompts = random_prompts(max(s["forward_rows"], RECIPE["rows"]), s["prompt"], vocab)
        parts = {"build": lambda: build(name, c, dev, s["dtype"], state),
                 "forward": lambda: measure_forward(state["adapter"], prompts, s, dev,
                                                    s.get("block_length", {}).get(name, SAMPLING[name]["block_length"])),
                 "rollout": lambda: measure_rollout(state["adapter"], prompts, s, dev, name, SAMPLING[name], m["forward"]),
                 "espo": lambda: measure_espo(state["adapter"], prompts, s, dev, name, vocab)}
        for part, fn in parts.items():
            elapsed = time.perf_counter() - t0
            if elapsed > BUDGET_S or elapsed + took.get(part, 0.0) > HARD_LIMIT_S:
                r = {"skipped": f"time budget: {elapsed:.0f} s elapsed, {BUDGET_S} s allowed"}
            else:
                try:
                    r = fn()
                except Exception as exc:  # noqa: BLE001 (recorded; the next model still runs)
                    r, failed = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}, True
            took[part] = max(took.get(part, 0.0), time.perf_counter() - t0 - elapsed)
            m[part] = r
            print(summary(name, part, r), flush=True)
            if part in ("build", "forward") and {"error", "skipped"} & set(r):
                break  # the later parts need the model and the forward timings
        if all(part in m and not {"error", "skipped"} & set(m[part]) for part in parts):
            entry["extrapolated"]["recipe_step"] = extrapolate(m, name)
            print(summary(name, "recipe", entry["extrapolated"]["recipe_step"]), flush=True)
        state.clear()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        result["elapsed_s"] = time.perf_counter() - t0
        atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")  # after each model: partial results survive
    print(f"total {result['elapsed_s']:.0f} s; wrote {a.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

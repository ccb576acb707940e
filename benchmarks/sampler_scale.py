"""The sampler's own (non-model) cost per row per denoising step at real vocabularies, today's sampler
against the one in git history, side by side in one process.

A stub returns fixed random bf16 logits in place of the model (a slice of them where the sampler asks
for the current block only), so what is timed is the sampler's bookkeeping; the time spent inside the
stub is subtracted anyway. Shapes: LLaDA-8B (V=126,464, blocks of 32, low-confidence remasking) and
Dream-7B (V=152,064, one block of 256, entropy remasking); prompt 110 + L 256, 128 steps, temperature
0.9, 2 rows. The baseline is slow (about a second per row per step), so it runs only the first
``--baseline-steps`` steps; per-step cost is uniform over a run, so the mean is comparable.

  python benchmarks/sampler_scale.py [--baseline REV] [--baseline-steps 4]   # writes results/benchmarks/sampler_scale.json
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, machine, md_table, write_json  # noqa: E402
from dllm_rl.diffusion import sampler as current  # noqa: E402

BASELINE = "642347b"
"""The last commit with the host-side float64 sampler."""
SHAPES = {
    "llada-8b": dict(vocab=126464, block_length=32, remasking="low_confidence", mask_id=126336),
    "dream-7b": dict(vocab=152064, block_length=256, remasking="entropy", mask_id=151666),
}


class _Stop(Exception):
    """Raised by the stub to end a baseline run after its budget of steps."""


class Stub:
    """Fixed bf16 logits [rows, T, V]; counts calls and the seconds spent inside (not sampler work)."""

    def __init__(self, rows: int, width: int, vocab: int, max_calls: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.logits = (torch.randn(rows, width, vocab, generator=g) * 3).to(torch.bfloat16)
        self.calls, self.inside, self.max_calls = 0, 0.0, max_calls

    def __call__(self, ids, attn, logits_to_keep=0):
        start = time.perf_counter()
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise _Stop
        self.calls += 1
        out = self.logits[: ids.shape[0]]
        out = out[:, logits_to_keep] if isinstance(logits_to_keep, slice) else out
        self.inside += time.perf_counter() - start
        return out


def _full_only(stub: Stub):
    """The stub as a model without ``logits_to_keep`` (what the baseline sampler expects)."""
    return lambda ids, attn: stub(ids, attn)


def load_baseline(rev: str) -> types.ModuleType:
    """The sampler module as it was at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:dllm_rl/diffusion/sampler.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"sampler_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"sampler_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def measure(module, shape: dict, rows: int, prompt: int, length: int, steps: int | None, temperature: float,
            full_logits: bool) -> dict:
    """Seconds per row per step outside the stub, over ``steps`` steps (None = the whole generation)."""
    stub = Stub(rows, prompt + length, shape["vocab"], max_calls=steps)
    cfg = module.SamplerConfig(gen_length=length, steps=length // 2, block_length=shape["block_length"],
                               temperature=temperature, remasking=shape["remasking"])
    gens = [torch.Generator().manual_seed(i) for i in range(rows)]
    prompts = [[5 + i] * prompt for i in range(rows)]
    fn = _full_only(stub) if full_logits else stub
    start = time.perf_counter()
    out = None
    try:
        out = module.generate(fn, prompts, shape["mask_id"], 0, cfg, gens)
    except _Stop:
        pass
    total = time.perf_counter() - start
    return {"steps": stub.calls, "seconds": total, "stub_seconds": stub.inside,
            "s_per_row_step": (total - stub.inside) / (rows * stub.calls), "out": out}


def section(data: dict) -> str:
    """The BENCHMARKS.md section of a run's JSON."""
    m = data["machine"]
    rows = [[name, f"{e['vocab']:,}", e["block_length"], e["remasking"], f"{e['baseline']['s_per_row_step'] * 1e3:.0f}",
             f"{e['current_first_steps']['s_per_row_step'] * 1e3:.1f}", f"{e['current_all_steps']['s_per_row_step'] * 1e3:.1f}",
             f"**{e['speedup']:.0f}x**"] for name, e in data["shapes"].items()]
    return ("## The sampler at real vocabularies: non-model cost per row per denoising step\n\n"
            f"`python benchmarks/sampler_scale.py`: today's sampler against the one at `{data['baseline']}` (host-side "
            "float64 copies of all completion positions' logits, Gumbel noise over [L, V] per row), side by side in one "
            f"process; {data['rows']} rows, prompt {data['prompt']} + L {data['gen_length']}, {data['steps']} steps, "
            f"temperature {data['temperature']}. A stub returns fixed bf16 logits in place of the model (only the current "
            "block where the sampler asks for it); its own time is subtracted. The baseline runs only its first steps "
            f"(about a second each). Machine: {m['cpus']} CPUs, load average {m['load_avg_1m']} at start, torch "
            f"{m['torch']}, {m['date']}.\n\n"
            + md_table(["shape", "V", "block", "remasking", "baseline ms / row / step (first steps)", "now, same steps",
                        "now, all steps", "less non-model cost"], rows)
            + "\n\nThe baseline's cost is the same at every step (float64 copies and noise over all L positions), so "
            "its first steps stand for the whole generation; today's falls as positions are committed (proposals "
            "only at the positions still masked, of the current block), so the ratio is taken over all steps. With "
            "blocks of 32 (LLaDA) a step touches at most one block of logits; with Dream's single block of 256 (pure "
            "diffusion) every masked position can be committed at every step, so the gain there is float32 work at "
            "the masked positions against float64 on all of them.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline sampler")
    ap.add_argument("--baseline-steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=110)
    ap.add_argument("--length", type=int, default=256)
    args = ap.parse_args(argv)
    old = load_baseline(args.baseline)
    report = {"machine": machine(), "baseline": args.baseline, "rows": args.rows, "prompt": args.prompt,
              "gen_length": args.length, "steps": args.length // 2, "temperature": 0.9, "shapes": {}}
    table = []
    for name, shape in SHAPES.items():
        before = measure(old, shape, args.rows, args.prompt, args.length, args.baseline_steps, 0.9, True)
        after_first = measure(current, shape, args.rows, args.prompt, args.length, args.baseline_steps, 0.9, False)
        after = measure(current, shape, args.rows, args.prompt, args.length, None, 0.9, False)
        ratio = before["s_per_row_step"] / after["s_per_row_step"]
        entry = {"baseline": {k: v for k, v in before.items() if k != "out"},
                 "current_first_steps": {k: v for k, v in after_first.items() if k != "out"},
                 "current_all_steps": {k: v for k, v in after.items() if k != "out"},
                 "speedup": ratio, **shape}
        report["shapes"][name] = entry
        table.append([name, f"{shape['vocab']:,}", shape["block_length"], f"{before['s_per_row_step'] * 1e3:.0f}",
                      f"{after_first['s_per_row_step'] * 1e3:.1f}", f"{after['s_per_row_step'] * 1e3:.1f}", f"{ratio:.0f}x"])
        print(f"{name}: baseline {before['s_per_row_step'] * 1e3:.0f} ms, now {after['s_per_row_step'] * 1e3:.1f} ms "
              f"per row per step ({ratio:.0f}x)", flush=True)
    path = write_json("sampler_scale", report)
    print(md_table(["shape", "V", "block", f"baseline ({args.baseline}) ms / row / step (first {args.baseline_steps} steps)",
                    "now, same steps", "now, all 128 steps", "less non-model cost"], table))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

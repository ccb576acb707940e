"""Accuracy impact of the cheaper rollout options on the tiny model's held-out accuracy: greedy
decoding of the cached base checkpoint (the model ESPO starts from) on the Sudoku and Countdown test
splits, fixed L/2-step schedule (the evaluation protocol) against confidence-threshold decoding with
and without EOS early stop, with a step budget (a fraction of L/2 steps, rounded; the fixed
schedule of that many steps is the floor), and with approximate prompt caching. Reports accuracy, NFE per sample (each row's own forward passes) and the
NFE ratio to the L/2 baseline; writes results/benchmarks/threshold_accuracy.json.

Set DLLM_RL_CACHE to reuse cached base models (pretraining them takes minutes). ``--model`` runs the
same table for another model (e.g. ``--model llada --set model.path=...`` where weights exist)."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_json  # noqa: E402
from dllm_rl.diffusion.sampler import SamplerConfig, generate  # noqa: E402
from dllm_rl.pipeline import build_task, load_model, resolve_config  # noqa: E402

# (label, threshold, early stop, step budget as a fraction of the L/2 baseline's steps,
#  prompt cache: None = off, else refresh every N passes with 0 = never)
VARIANTS = [("fixed L/2 (baseline)", None, False, None, None), ("threshold 0.99", 0.99, False, None, None),
            ("threshold 0.95", 0.95, False, None, None), ("threshold 0.9", 0.9, False, None, None),
            ("threshold 0.9 + early stop", 0.9, True, None, None), ("threshold 0.88", 0.88, False, None, None),
            ("threshold 0.85", 0.85, False, None, None), ("threshold 0.8", 0.8, False, None, None),
            ("threshold 0.7", 0.7, False, None, None), ("threshold 0.5", 0.5, False, None, None),
            ("threshold 0.95, budget 0.42 x L/2 steps", 0.95, False, 0.42, None),
            ("threshold 0.9, budget 0.42 x L/2 steps", 0.9, False, 0.42, None),
            ("threshold 0.9, budget 0.33 x L/2 steps", 0.9, False, 0.33, None),
            ("fixed L/2, prompt cache", None, False, None, 0),
            ("fixed L/2, prompt cache refreshed every 3 passes", None, False, None, 3),
            ("threshold 0.9, budget 0.42 x L/2 steps, prompt cache refreshed every 3 passes", 0.9, False, 0.42, 3)]


def evaluate(adapter, task, split, cfg: SamplerConfig, batch_size: int, max_examples: int | None):
    style = adapter.prompt_style
    examples = task.examples(split)[:max_examples]
    prompts = [adapter.encode_prompt(task.prompt(ex, style)) for ex in examples]
    texts, nfe = [], []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        out = generate(adapter.logits, prompts[i:i + batch_size], adapter.mask_id, adapter.pad_id, cfg, None,
                       adapter.prompt_cache_fns() if cfg.prompt_cache else None)
        texts.extend(adapter.decode(row) for row in out.completions)
        nfe.append(out.row_nfe)
    seconds = time.perf_counter() - start
    primary = task.protocol(style).primary_metric
    scores = [s[primary] for s in task.scores(examples, texts, style)]
    acc = sum(scores) / len(scores)
    return {"metric": primary, "accuracy": acc, "stderr": math.sqrt(max(acc * (1 - acc), 0.0) / len(scores)),
            "n": len(scores), "nfe_per_sample": float(torch.cat(nfe).float().mean()), "seconds": seconds, "texts": texts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sudoku", "countdown"])
    p.add_argument("--split", default="test")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--thresholds", type=float, nargs="*", default=None,
                   help="threshold variants to run after the baseline (default: the standard list)")
    p.add_argument("--budget", type=float, default=None,
                   help="with --thresholds: a step budget, as a fraction of the L/2 baseline's steps")
    p.add_argument("--prompt-cache", type=int, default=None,
                   help="with --thresholds: reuse the prompt's keys and values, refreshed every N passes (0 = never)")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "margin"])
    p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks (default: the run's)")
    p.add_argument("--model", default="tiny", help="model family or alias (default: the built-in tiny model)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="run setting, repeatable")
    p.add_argument("--out", default="threshold_accuracy", help="name of the JSON file in results/benchmarks/")
    a = p.parse_args(argv)
    budget = a.budget
    variants = VARIANTS if a.thresholds is None else [VARIANTS[0]] + [
        (f"threshold {t:g}" + (f", budget {budget:g} x L/2 steps" if budget else ""), t, False, budget, a.prompt_cache)
        for t in a.thresholds]
    torch.set_grad_enabled(False)
    results = {"machine": machine(), "split": a.split, "tasks": {}}
    for name in a.tasks:
        run = resolve_config(algo="espo", task=name, model=a.model, sets=tuple(a.sets))
        task = build_task(run)
        adapter = load_model(run, task)
        adapter.model.eval()
        length = task.protocol(adapter.prompt_style).lengths[0]
        rows, base = [], None
        for label, threshold, early, frac, cache in variants:
            steps = None if frac is None else max(1, round(frac * (length // 2)))
            cfg = SamplerConfig(gen_length=length, block_length=a.block_length or run.rollout.block_length, temperature=0.0,
                                steps=steps, threshold=threshold, prompt_cache=cache is not None,
                                prompt_cache_refresh=cache or 0, remasking=a.remasking if threshold is not None else "low_confidence",
                                eos_id=adapter.eos_id if early else None)
            r = evaluate(adapter, task, a.split, cfg, a.batch_size, a.max_examples)
            texts = r.pop("texts")
            if base is None:
                base, base_texts = r, texts
            label = label if steps is None else label.replace("x L/2 steps", f"x L/2 = {steps} steps")
            r.update(variant=label, threshold=threshold, early_stop=early, steps=steps, prompt_cache=cache, gen_length=length,
                     nfe_ratio=r["nfe_per_sample"] / base["nfe_per_sample"], accuracy_delta=r["accuracy"] - base["accuracy"],
                     time_ratio=r["seconds"] / base["seconds"],
                     same_text_frac=sum(t == u for t, u in zip(texts, base_texts)) / len(texts))
            rows.append(r)
            print(f"{name:10s} {label:28s} acc {100 * r['accuracy']:5.1f}  nfe {r['nfe_per_sample']:5.1f} "
                  f"({r['nfe_ratio']:.2f}x)  same {r['same_text_frac']:.2f}  {r['seconds']:.1f}s", flush=True)
        results["tasks"][name] = rows
    write_json(a.out, results)


if __name__ == "__main__":
    main()

"""One speed measurement (run in its own process so that its peak memory is its own), printed as JSON.

  --part sampler: the sampler at the fixed L/2-step schedule (greedy and temperature 0.9): generated
      tokens/s, NFE per sample, and the forward-only bound (one plain batched no-grad forward pass
      at the same [batch, prompt + L] shape); ratio = sampler tokens/s over the bound.
  --part update: one ESPO policy update (prepare + mu optimizer steps, M=2 coupled, beta > 0) with
      the forward/backward passes counted per sample against the FLOP model 2ND(K + 6 mu M) (ESPO
      Sec. 5.5) and its extension with the old/reference passes this trainer actually runs; the
      measured time against the time predicted from the measured forward cost (backward = 2 forwards)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODELS, build_model, num_params, peak_rss_mb, random_prompts, timed  # noqa: E402
from dllm_rl.algorithms.espo import ESPO, ESPOConfig  # noqa: E402
from dllm_rl.diffusion.sampler import SamplerConfig, generate, left_pad  # noqa: E402
from dllm_rl.rl.rollout import RolloutBatch  # noqa: E402


def forward_time(adapter, ids, attn, grad: bool = False, repeats: int = 3) -> float:
    """Median seconds of one batched forward (no_grad), or forward + backward when ``grad``."""
    def run():
        if grad:
            adapter.logits(ids, attn).float().logsumexp(-1).mean().backward()
        else:
            with torch.no_grad():
                adapter.logits(ids, attn)
    return timed(run, repeats=repeats)


def sampler_part(name: str, repeats: int) -> dict:
    shape = MODELS[name]
    adapter = build_model(name)
    b, tp, length = shape["batch"], shape["prompt"], shape["gen_length"]
    prompts = random_prompts(adapter, b, tp)
    ids, attn = left_pad(prompts, adapter.pad_id)
    ids = torch.cat([ids, torch.full((b, length), adapter.mask_id)], 1)
    attn = torch.cat([attn, torch.ones(b, length, dtype=torch.long)], 1)
    t_fwd = forward_time(adapter, ids, attn, repeats=5)
    out = {"model": name, "params": num_params(adapter.model), **shape, "forward_s": t_fwd,
           "forward_tokens_per_s": b * ids.shape[1] / t_fwd}
    for label, temperature in (("greedy", 0.0), ("t0.9", 0.9)):
        cfg = SamplerConfig(gen_length=length, block_length=shape["block_length"], temperature=temperature)
        result = {}

        def run():
            gens = [torch.Generator().manual_seed(i) for i in range(b)]
            result["out"] = generate(adapter.logits, prompts, adapter.mask_id, adapter.pad_id, cfg, gens)
        seconds = timed(run, repeats=repeats)
        nfe = result["out"].row_nfe.float()
        bound = b * length / (float(nfe.mean()) * t_fwd)  # generated tokens/s if the sampler did only forwards
        out[label] = {"seconds": seconds, "nfe_per_sample": float(nfe.mean()), "tokens_per_s": b * length / seconds,
                      "bound_tokens_per_s": bound, "ratio_to_bound": b * length / seconds / bound}
    return out


class PassCounter:
    """Counts rows through the model's forward, split by whether autograd records them (those get
    exactly one backward each in an update)."""

    def __init__(self, model):
        self.grad_rows = self.nograd_rows = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if torch.is_grad_enabled():
            self.grad_rows += ids.shape[0]
        else:
            self.nograd_rows += ids.shape[0]


def toy_batch(adapter, b: int, tp: int, length: int, step: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(1)
    prompt_ids, prompt_mask = left_pad(random_prompts(adapter, b, tp), adapter.pad_id)
    completions = torch.randint(4, adapter.vocab, (b, length), generator=g)
    rewards = torch.rand(b, generator=g)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completions,
                        valid_mask=torch.ones(b, length, dtype=torch.bool), rewards=rewards,
                        advantages=rewards - rewards.mean(), rows=torch.arange(b), groups=torch.arange(b) // 4,
                        commit_step=torch.zeros(b, length, dtype=torch.long), sample_logprobs=torch.zeros(b, length),
                        step=step, num_rows=b, num_groups=b // 4, total_valid_tokens=b * length)


def update_part(name: str, mu: int, masks_per: str, repeats: int) -> dict:
    shape = MODELS[name]
    adapter = build_model(name)
    adapter.freeze_reference()
    adapter.model.train()
    b, tp, length = shape["batch"], shape["prompt"], shape["gen_length"]
    cfg = ESPOConfig(mu=mu, masks_per=masks_per, beta=0.01)  # M=2 coupled, as in the paper
    algo = ESPO(cfg, seed=0)
    batch = toy_batch(adapter, b, tp, length)
    opt = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=1e-6)
    seqs = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    attn = torch.cat([batch.prompt_mask, torch.ones(b, length, dtype=torch.long)], 1)
    t_fwd = forward_time(adapter, seqs, attn, repeats=5)
    t_fwd_bwd = forward_time(adapter, seqs, attn, grad=True, repeats=3)
    opt.zero_grad(set_to_none=True)

    def update():  # the trainer's update on one process, one micro-batch
        cache = algo.prepare(adapter, batch, b)
        for it in range(mu):
            opt.zero_grad(set_to_none=True)
            loss, _ = algo.loss(adapter, batch, cache, it)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), 1.0)
            opt.step()

    update()  # warm-up
    counters = [PassCounter(adapter.model), PassCounter(adapter.reference_model)]
    start = time.perf_counter()
    update()
    first = time.perf_counter() - start
    grad_rows = sum(c.grad_rows for c in counters)
    nograd_rows = sum(c.nograd_rows for c in counters)
    for c in counters:
        c.handle.remove()
    seconds = min(first, timed(update, repeats=repeats - 1, warmup=0)) if repeats > 1 else first
    m = cfg.num_mc * (2 if cfg.coupled else 1)  # forward passes per ELBO estimate (coupled: mask + complement)
    old = (mu - 1) * m if masks_per == "iteration" else (m if mu > 1 else 0)
    ref = (mu if masks_per == "iteration" else 1) * m if cfg.beta > 0 else 0
    fe = (nograd_rows + 3 * grad_rows) / b  # forward-equivalents per sample, backward = 2 forwards
    predicted = fe * t_fwd  # t_fwd is one batched pass over all b rows
    return {"model": name, "mu": mu, "masks_per": masks_per, "M": cfg.num_mc, "seconds": seconds,
            "forward_s": t_fwd, "forward_backward_s": t_fwd_bwd, "backward_over_forward": (t_fwd_bwd - t_fwd) / t_fwd,
            "grad_passes_per_sample": grad_rows / b, "nograd_passes_per_sample": nograd_rows / b,
            "forward_equivalents_per_sample": fe, "flop_model_fe": 6 * mu * cfg.num_mc,
            "flop_model_with_old_ref_fe": 6 * mu * cfg.num_mc + old + ref,
            "public_trainer_fe": 6 * mu * cfg.num_mc + 2 * mu * m,  # old + ref for every iteration up front
            "predicted_s": predicted, "measured_over_predicted": seconds / predicted}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--part", choices=["sampler", "update"], default="sampler")
    p.add_argument("--mu", type=int, default=1)
    p.add_argument("--masks-per", choices=["iteration", "rollout"], default="iteration")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if a.part == "sampler":
        out = sampler_part(a.model, a.repeats)
    else:
        out = update_part(a.model, a.mu, a.masks_per, a.repeats)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

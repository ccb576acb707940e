"""Estimated memory and time per ESPO step of LLaDA-8B / Dream-7B on one 80 GB GPU, from the FLOP model
of the ESPO paper (Sec. 5.5: 2*N*D*(K + 6*mu*M) per sample with coupled sampling) and the model sizes
of the native families (counted on the meta device, so nothing is downloaded). An ESTIMATE: no GPU
was used. Prints the Markdown table of docs/models.md.

    python benchmarks/estimate_step_cost.py
"""
from __future__ import annotations

import torch

from dllm_rl.models.dream import DreamConfig, DreamModel
from dllm_rl.models.families import _dream_spec, _llada_spec
from dllm_rl.models.lora import matches
from dllm_rl.models.llada import LLaDAConfig, LLaDAModelLM

GB = 1e9
# The paper's ESPO setup (App. E): G=6 x 16 prompts, L=256, K=L/2 denoising steps, mu=8, M=2, LoRA r=128.
G, PROMPTS, L, MU, M, R = 6, 16, 256, 8, 2, 128
K = L // 2
MICRO = 8  # optim.micro_batch_size of the recipes; each row is scored as 2 coupled copies
BLOCK = {"llada": 32, "dream": 256}  # the recipes' semi-autoregressive blocks (Dream: one block, pure diffusion)
SAMPLER_WORK = 3 * 2**28  # at most about three float32 chunks of dllm_rl.diffusion.proposals.WORK_BYTES on a GPU
# Chat prompt lengths in tokens (characters / 4 + ~15 template tokens; the released tokenizers are
# not available here, so these are estimates too).
PROMPT_TOKENS = {"countdown": 110, "sudoku": 220}
GPUS = {"H100 80GB (989 TFLOP/s bf16)": 989e12, "A100 80GB (312 TFLOP/s bf16)": 312e12}
MFU = 0.4  # assumed model-FLOP utilisation for batched full-sequence forward/backward passes


def sizes(name: str):
    with torch.device("meta"):
        if name == "llada":
            model, spec = LLaDAModelLM(LLaDAConfig()), _llada_spec()
        else:
            model, spec = DreamModel(DreamConfig()), _dream_spec()
    n = sum(p.numel() for p in model.parameters())
    lora = 0
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(matches(t, mod_name) for t in spec.lora_targets):
            lora += R * (module.in_features + module.out_features)
    c = model.config
    hidden = c.d_model if name == "llada" else c.hidden_size
    layers = c.n_layers if name == "llada" else c.num_hidden_layers
    ffn = c.mlp_hidden_size if name == "llada" else c.intermediate_size
    vocab = model.get_input_embeddings().num_embeddings
    return n, lora, hidden, layers, ffn, vocab


def estimate(name: str, task: str):
    n, lora, hidden, layers, ffn, vocab = sizes(name)
    d = PROMPT_TOKENS[task] + L
    samples = G * PROMPTS
    unit = 2 * n * d  # FLOPs of one forward pass of one sample
    paper = unit * (K + 6 * MU * M)
    # ours also scores theta_old (mu-1 iterations) and theta_ref (mu) once per rollout batch, coupled:
    # 2*M*(2*mu-1) more forwards. Checkpointing re-runs each training forward (+2*mu*M) while LoRA's
    # backward skips the frozen weights' gradients (-2*mu*M): those two cancel.
    ours = unit * (K + 6 * MU * M + 2 * M * (2 * MU - 1))
    seqs = 2 * MICRO
    mem = {
        "weights (bf16)": 2 * n,
        "LoRA params + grads + AdamW (fp32)": 16 * lora,
        "checkpointed layer inputs": seqs * d * hidden * 2 * layers,
        "one layer recomputed": seqs * d * ffn * 2 * 4,
        # bf16 completion logits of each of the M passes, kept for the backward; one pass's bf16 logit
        # gradient; one float32 chunk of the chunked log-probs (dllm_rl.diffusion.logprobs)
        "completion logits (bf16, M passes) + one gradient + log-prob chunk": seqs * L * vocab * 2 * (M + 1) + 2**26,
    }
    block = BLOCK[name]
    rollout_logits = samples * block * vocab * 2  # the head runs on the current block only
    return n, lora, d, paper * samples, ours * samples, mem, rollout_logits, block


def main():
    print("| model, task | params | LoRA r128 params | D (tokens) | FLOPs/step, paper model | FLOPs/step, this implementation "
          "| peak GPU memory (training micro-batch) | " + " | ".join(f"time/step, {g}" for g in GPUS) + " |")
    print("|" + "---|" * (7 + len(GPUS)))
    for name, label in (("llada", "LLaDA-8B-Instruct"), ("dream", "Dream-v0-Instruct-7B")):
        for task in PROMPT_TOKENS:
            n, lora, d, paper, ours, mem, rollout, block = estimate(name, task)
            peak = sum(mem.values())
            times = [f"~{ours / (peak_flops * MFU) / 60:.0f} min" for peak_flops in GPUS.values()]
            print(f"| {label}, {task} | {n / 1e9:.2f} B | {lora / 1e6:.0f} M | {d} | {paper:.2e} | {ours:.2e} "
                  f"| ~{peak / GB:.0f} GB | " + " | ".join(times) + " |")
    for name in ("llada", "dream"):
        n, lora, d, paper, ours, mem, rollout, block = estimate(name, "countdown")
        print(f"\n{name}, Countdown, memory terms:")
        for k, v in mem.items():
            print(f"- {k}: {v / GB:.1f} GB")
        print(f"- rollout logits of all {G * PROMPTS} rows at once, head on the current block of {block} (bf16, no grad): "
              f"{rollout / GB:.1f} GB, plus the sampler's float32 working set (at most ~{SAMPLER_WORK / GB:.1f} GB)")


if __name__ == "__main__":
    main()

"""Memory bound of one ESPO micro-batch loss (forward and backward) at LLaDA's vocabulary, on the CPU.

The bound, and why: every Monte-Carlo pass keeps its completion-position logits for the backward
pass (num_mc of them: the head's output is what the log-softmax gradient needs), the backward adds
one pass's logit gradient, and the log-probs need one float32 chunk of rows at a time. So peak <=
(num_mc + 1) x one pass's logits + 1.5 x one log-prob chunk. A full float32 log-softmax (the old
path: an fp32 copy plus the saved fp32 output, per pass) needs about 8 x one pass's bf16 logits."""
import torch

import dllm_rl.diffusion.likelihood as likelihood
from dllm_rl.algorithms.espo import ESPO, ESPOConfig
from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask

VOCAB, ROWS, PROMPT, L = 126464, 4, 8, 64


def _setup():
    c = TinyDLMConfig(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = TinyDLM(c)
    model.reset_parameters(torch.Generator().manual_seed(0))
    adapter = ModelAdapter(model=model.to(torch.bfloat16), tokenizer=None, mask_id=3, eos_id=2, pad_id=0, stop_ids=(2,))
    g = torch.Generator().manual_seed(0)
    completions = torch.randint(4, VOCAB, (ROWS, L), generator=g)
    prompts = torch.randint(4, VOCAB, (ROWS, PROMPT), generator=g)
    adv = torch.tensor([0.5, -0.5] * (ROWS // 2))
    batch = RolloutBatch(prompt_ids=prompts, prompt_mask=torch.ones_like(prompts), completion_ids=completions,
                         valid_mask=valid_token_mask(completions, (2,)), rewards=adv.clone(), advantages=adv,
                         rows=torch.arange(ROWS), groups=torch.arange(ROWS) // 2,
                         commit_step=torch.zeros(ROWS, L, dtype=torch.long), sample_logprobs=torch.zeros(ROWS, L),
                         step=0, num_rows=ROWS, num_groups=ROWS // 2, total_valid_tokens=ROWS * L)
    return adapter, batch


def test_espo_micro_batch_peak_memory_at_a_real_vocabulary(memory, monkeypatch):
    adapter, batch = _setup()
    algo = ESPO(ESPOConfig(num_mc=2, beta=0.0), seed=0)

    def step():
        loss, _ = algo.loss(adapter, batch, {}, 0)
        loss.backward()
        return float(loss.detach())

    one_pass = 2 * ROWS * L * VOCAB * 2  # coupled masks: 2 copies of each row, bf16
    chunk = (2**24 // VOCAB) * VOCAB * 4  # one float32 chunk of the chunked log-probs
    bound = (algo.config.num_mc + 1) * one_pass + 1.5 * chunk
    _, peak, _ = memory.profiled(step)
    assert peak < bound, f"peak {peak / 2**20:.0f} MiB over the bound {bound / 2**20:.0f} MiB"

    # the same loss through a full float32 log-softmax breaks the bound: it measures what it claims
    monkeypatch.setattr(likelihood, "gather_logprobs", lambda logits, targets: torch.log_softmax(
        logits.float(), -1).gather(-1, targets.to(logits.device)[..., None]).squeeze(-1))
    _, naive, _ = memory.profiled(step)
    assert naive > 2 * bound

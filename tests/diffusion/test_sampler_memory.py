"""Memory bound of the sampler at LLaDA's vocabulary, on the CPU.

The bound, and why: the logits of the rows and positions in play (the current block) are the model's
output and unavoidable; the sampler itself adds at most a few float32 chunks of its working set
(``proposals.WORK_BYTES``) and O(rows x L) state, whatever the batch. So the peak of a whole
generation (every step) <= the in-play bf16 logits + 4 x WORK_BYTES + 1 MiB: below what a single
float32 copy of the in-play logits would take, let alone the float64 copy of all completion
positions the earlier sampler made (16 x the in-play bf16 logits at L = 2 blocks)."""
import torch

from dllm_rl.diffusion.proposals import WORK_BYTES
from dllm_rl.diffusion.sampler import SamplerConfig, generate

VOCAB, ROWS, PROMPT, L, BLOCK = 126464, 4, 16, 64, 32


def test_sampler_peak_memory_is_the_in_play_logits_plus_a_bounded_working_set(memory):
    g = torch.Generator().manual_seed(0)
    full = (torch.randn(ROWS, PROMPT + L, VOCAB, generator=g) * 3).to(torch.bfloat16)

    def model(ids, attn, logits_to_keep=0):  # a fresh output tensor per pass, as a model's would be
        return full[: ids.shape[0], logits_to_keep].clone()

    in_play = ROWS * BLOCK * VOCAB * 2
    bound = in_play + 4 * WORK_BYTES["cpu"] + 2**20
    assert bound < 2 * in_play  # one float32 copy of the in-play logits would break it
    for temperature, remasking in ((0.9, "low_confidence"), (0.0, "low_confidence"), (0.9, "entropy")):
        cfg = SamplerConfig(gen_length=L, steps=4, block_length=BLOCK, temperature=temperature, remasking=remasking)
        gens = [torch.Generator().manual_seed(i) for i in range(ROWS)]
        out, peak, _ = memory.profiled(lambda: generate(model, [[5] * PROMPT] * ROWS, 3, 0, cfg, gens))
        assert out.completions.shape == (ROWS, L) and not bool((out.completions == 3).any())
        assert peak < bound, f"{temperature} {remasking}: peak {peak / 2**20:.1f} MiB over {bound / 2**20:.1f} MiB"

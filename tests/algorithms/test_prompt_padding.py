"""The prompt-masking objectives (d1's diffu-GRPO, wd1, SPG) give a row the same loss alone as in a
left-padded batch with a longer prompt: each row's prompt mask depends on its key and its own real
tokens only, so one process and several (each padding only its own prompts) compute the same update.
The model is the real tiny DLM, whose output ignores left padding, so any difference is the masks'."""
import pytest
import torch

from dllm_rl.algorithms.diffu_grpo import DiffuGRPO, DiffuGRPOConfig
from dllm_rl.algorithms.spg import SPG, SPGConfig
from dllm_rl.algorithms.wd1 import WD1, WD1Config
from dllm_rl.diffusion.sampler import left_pad
from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask

PAD, MASK, EOS = 0, 1, 2
PROMPTS = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]]  # group 0 short, group 1 long
COMPLETIONS = [[30, 31, 2, 2], [32, 2, 2, 2], [33, 34, 35, 2], [36, 37, 2, 2]]
ADV = [1.0, -1.0, 0.5, -0.5]
G, STEP = 2, 4


def tiny(seed: int) -> TinyDLM:
    model = TinyDLM(TinyDLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


def adapter() -> ModelAdapter:
    """Policy and reference differ, so the KL term (d1) depends on the prompt masks too."""
    return ModelAdapter(model=tiny(0), tokenizer=None, mask_id=MASK, eos_id=EOS, pad_id=PAD, stop_ids=(EOS,),
                        reference_model=tiny(1))


def rollout(rows: list[int]) -> RolloutBatch:
    """The ``rows`` of the 4-row rollout batch as one process builds them: its own prompts left-padded
    to its own longest, full-batch constants (row indices, sizes, valid-token count) kept."""
    prompt_ids, prompt_mask = left_pad([PROMPTS[r // G] for r in rows], PAD)
    completion = torch.tensor([COMPLETIONS[r] for r in rows])
    valid = valid_token_mask(completion, (EOS,))
    total = int(valid_token_mask(torch.tensor(COMPLETIONS), (EOS,)).sum())
    idx = torch.tensor(rows)
    adv = torch.tensor([ADV[r] for r in rows])
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion, valid_mask=valid,
                        rewards=adv.clone(), advantages=adv, rows=idx, groups=idx // G,
                        commit_step=torch.zeros_like(completion), sample_logprobs=torch.zeros(completion.shape),
                        step=STEP, num_rows=len(COMPLETIONS), num_groups=len(COMPLETIONS) // G, total_valid_tokens=total)


ALGORITHMS = {
    "diffu-grpo": lambda: DiffuGRPO(DiffuGRPOConfig(mu=2, p_mask_prompt=0.5), seed=7),
    "wd1": lambda: WD1(WD1Config(mu=2, p_mask_prompt=0.5), seed=7),
    "spg": lambda: SPG(SPGConfig(mu=2, block_length=2, p_mask_prompt=0.5), seed=7),
}


def update_loss(algo, policy, old, batch: RolloutBatch, iteration: int) -> torch.Tensor:
    """The batch's loss at ``iteration`` with theta_old (and ref) from ``old``, as the trainer runs it."""
    with torch.no_grad():
        return algo.loss(policy, batch, algo.prepare(old, batch, 2), iteration)[0]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_rows_loss_does_not_depend_on_the_batchs_padding(name):
    algo = ALGORITHMS[name]()
    old = adapter()
    policy = adapter()
    policy.model = tiny(2)  # theta moved away from theta_old: ratios depend on the prompt masks
    padded = rollout([0, 1, 2, 3])  # one process: group 0's short prompt left-padded to group 1's
    assert bool((padded.prompt_mask[:2] == 0).any())
    for it in (0, 1):
        whole = update_loss(algo, policy, old, padded, it)
        per_group = [update_loss(algo, policy, old, rollout(rows), it) for rows in ([0, 1], [2, 3])]  # two processes
        assert float(whole) == pytest.approx(float(sum(per_group)), abs=1e-5)
        if name != "wd1":  # wd1's weights need the whole group; d1 and SPG: a row alone is its share
            cache = algo.prepare(old, padded, 2)
            with torch.no_grad():
                share = algo.loss(policy, padded.select(torch.tensor([0])), {k: v[:1] for k, v in cache.items()}, it)[0]
            assert float(share) == pytest.approx(float(update_loss(algo, policy, old, rollout([0]), it)), abs=1e-5)

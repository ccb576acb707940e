"""d1's code (and so diffu-GRPO and token-ELBO, which keep d1's GRPO settings) uses advantages
r - group mean, not divided by the group std; the std-scaled form (TRL's GRPO) stays an option."""
import math

import pytest
import torch

from dllm_rl.algorithms.diffu_grpo import DiffuGRPO, DiffuGRPOConfig
from dllm_rl.algorithms.token_elbo import TokenELBO, TokenELBOConfig
from dllm_rl.pipeline import build_algorithm, resolve_config

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5])


@pytest.mark.parametrize("name, algo, config", [("diffu-grpo", DiffuGRPO, DiffuGRPOConfig),
                                                ("token-elbo", TokenELBO, TokenELBOConfig)])
def test_advantages_are_group_mean_by_default_and_std_scaled_on_request(name, algo, config):
    assert config().scale_adv_by_std is False
    assert build_algorithm(resolve_config(name, "countdown", "tiny")).config.scale_adv_by_std is False  # no preset sets it
    assert algo(seed=0).advantages(REWARDS, 2).tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    scaled = algo(config(scale_adv_by_std=True), seed=0).advantages(REWARDS, 2)
    # group 1: std (ddof 1) = sqrt(0.5); group 2: zero variance -> 0
    assert scaled.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0.0, 0.0])

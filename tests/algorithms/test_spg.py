"""SPG against a hand computation on the toy policy (tests/algorithms/conftest.py), reading the keyed
block masks back and evaluating the bounds by plain loops:

l+_i = (1/m) sum_j mean_{k in S_j} log p_k,              S_j = masked valid tokens of draw j
EUBO_i = mean_{k in any S_j} (1/beta) log((1/m) sum_{j: k in S_j} p_k^beta / t_j),   t_j = |S_j| / |y_i|
loss = -sum_i A_i l_i |y_i| / sum_i |y_i|,   l_i = l+_i if A_i > 0 else (w EUBO_i + (1-w) l+_i)."""
import math

import pytest
import torch

from dllm_rl.algorithms.spg import SPG, SPGConfig
from dllm_rl.diffusion.masking import block_masks
from dllm_rl.pipeline import resolve_config

SEED, STEP = 3, 2
ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]  # valid: 3, 2, 3, 1 tokens
ADV = [1.0, -1.0, -0.5, 0.5]


def test_defaults_and_sudoku_preset():
    c = SPGConfig()
    assert (c.mu, c.num_mc, c.negative, c.eubo_beta, c.mix_weight, c.baseline) == (4, 2, "mix", 1.5, 0.5, "group_mean")
    assert resolve_config("spg", "sudoku", "tiny").algorithm.params["eubo_beta"] == 1.0


def hand_bounds(toy, iteration, beta, block_length=2, num_mc=2):
    valid_len = [3, 2, 3, 1]
    masks = block_masks((SEED, "spg", STEP, iteration), torch.arange(4), torch.tensor(valid_len), 3, block_length, num_mc)
    lower, upper = [], []
    for i, row in enumerate(ROWS):
        v = valid_len[i]
        sets = [[k for k in range(v) if masks[i, j, k]] for j in range(num_mc)]
        lower.append(sum(sum(toy.logp(k, row[k]) for k in s) / len(s) for s in sets) / num_mc)
        seen = sorted({k for s in sets for k in s})
        per = []
        for k in seen:
            mean = sum(toy.PROBS[k][row[k]] ** beta / (len(s) / v) for s in sets if k in s) / num_mc
            per.append(math.log(mean) / beta)
        upper.append(sum(per) / len(per))
    return lower, upper, masks


def test_block_masks_have_the_semi_autoregressive_shape(toy):
    _, _, masks = hand_bounds(toy, 1, 1.5)
    for i, v in enumerate([3, 2, 3, 1]):
        for j in range(2):
            m = masks[i, j].tolist()
            assert any(m[:v])  # at least one valid token masked
            first = m.index(True)
            assert all(m[(first // 2 + 1) * 2:])  # every block after the partially masked one is masked
            assert all(m[v:])  # EOS padding masked


@pytest.mark.parametrize("negative", ["eubo", "mix", "elbo"])
def test_loss_matches_the_hand_computation(toy, negative):
    algo = SPG(SPGConfig(mu=2, block_length=2, negative=negative, eubo_beta=1.5, mix_weight=0.5), seed=SEED)
    batch = toy.batch(ROWS, ADV, step=STEP)
    loss, metrics = algo.loss(toy.adapter(), batch, {}, 1)
    lower, upper, _ = hand_bounds(toy, 1, 1.5)
    neg = {"eubo": upper, "mix": [0.5 * u + 0.5 * l for u, l in zip(upper, lower)], "elbo": lower}[negative]
    chosen = [lower[0], neg[1], neg[2], lower[3]]  # A > 0 for rows 0 and 3
    lengths = [3, 2, 3, 1]
    want = -sum(a * l * n for a, l, n in zip(ADV, chosen, lengths)) / sum(lengths)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert metrics["lower_bound"] == pytest.approx(sum(lower) / 4, abs=1e-5)
    assert metrics["upper_bound"] == pytest.approx(sum(upper) / 4, abs=1e-5)
    assert metrics["neg_frac"] == 0.5


def test_eubo_equals_the_mean_log_prob_when_everything_is_masked_once(toy):
    """One draw masking every valid token (t = 1) with beta = 1: (1/beta) log(p^beta / t) = log p."""
    algo = SPG(SPGConfig(num_mc=1, block_length=8, eubo_beta=1.0), seed=SEED)
    batch = toy.batch([[2, 2, 2]], [1.0], group_size=1, step=STEP)  # one valid token: always masked
    with torch.no_grad():
        lower, upper = algo.bounds(toy.adapter().logits, toy.MASK, batch, 0)
    assert float(lower) == pytest.approx(toy.logp(0, 2), abs=1e-6)
    assert float(upper) == pytest.approx(toy.logp(0, 2), abs=1e-6)


def test_gradient_raises_positive_and_lowers_negative_completions(toy):
    algo = SPG(SPGConfig(negative="eubo", block_length=1), seed=SEED)
    adapter = toy.adapter()
    batch = toy.batch([[3, 4, 2], [4, 3, 2]], [1.0, -1.0], step=STEP)
    before = torch.tensor(toy.PROBS, dtype=torch.float64)
    masks = block_masks((SEED, "spg", STEP, 0), torch.arange(2), torch.tensor([3, 3]), 3, 1, 2)
    loss, _ = algo.loss(adapter, batch, {}, 0)
    after = toy.sgd_step(adapter, loss)
    for k in range(2):  # positions 0 and 1: the rows disagree; each position is moved when a draw masks it
        if masks[0, :, k].any() and masks[1, :, k].any():
            up, down = (toy.A, toy.B) if k == 0 else (toy.B, toy.A)
            assert after[k, up] > before[k, up] and after[k, down] < before[k, down]
    assert any(masks[0, :, k].any() and masks[1, :, k].any() for k in range(2))

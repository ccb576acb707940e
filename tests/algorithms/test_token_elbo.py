"""Token-level ELBO GRPO against a hand computation on the toy policy (tests/algorithms/conftest.py).

For a context-free model log p(y^k | any state) = log PROBS[k][y^k], so each ELBO token term is
L^k = c_k log PROBS[k][y^k], with c_k the mask weight the keyed coupled draws give token k:
c_k = (1/M) sum_m (1/2) sum_{halves h containing k} (L+1)/|h|. The loss is d1's, on rho_ik = exp(L^k - L^k_old)."""
import math

import pytest
import torch

from dllm_rl.algorithms.token_elbo import TokenELBO, TokenELBOConfig
from dllm_rl.diffusion.masking import sample_masks

SEED, STEP = 5, 3
ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]
ADV = [1.0, -1.0, -0.5, 0.5]


def test_defaults():
    c = TokenELBOConfig()
    assert (c.likelihood, c.action, c.num_mc, c.coupled, c.kl, c.beta, c.length_norm) == ("elbo", "token", 2, True, "k3", 0.04, "valid")


def mask_weights(iteration, n=4, length=3, num_mc=2):
    """c_k per row from the keyed masks, by plain loops."""
    c = [[0.0] * length for _ in range(n)]
    for m in range(num_mc):
        masked, weight = sample_masks((SEED, "token-elbo", STEP, iteration, m), torch.arange(n), n, length)
        for i in range(n):
            for half in range(2):
                for k in range(length):
                    if masked[i, half, k]:
                        c[i][k] += float(weight[i, half]) / 2 / num_mc
    return c


def test_terms_are_the_elbo_token_contributions(toy):
    algo = TokenELBO(TokenELBOConfig(mu=2), seed=SEED)
    batch = toy.batch(ROWS, ADV, step=STEP)
    with torch.no_grad():
        terms = algo._logp(toy.adapter().logits, toy.MASK, batch, 1)
    c = mask_weights(1)
    want = [[c[i][k] * toy.logp(k, t) for k, t in enumerate(row)] for i, row in enumerate(ROWS)]
    assert terms.tolist() == [pytest.approx(r, abs=1e-5) for r in want]
    # coupled pairs score each token exactly once, with weight (L+1)/l: c_k is never 0
    assert min(min(r) for r in c) > 0


RHO = [[1.2, 1.6, 0.4], [1.6, 0.4, 9.0], [1.0, 0.9, 1.1], [2.0, 9.0, 9.0]]
D = [[0.1, -0.2, 0.0], [0.3, 0.0, 5.0], [0.0, 0.0, 0.0], [-0.5, 5.0, 5.0]]


def test_loss_matches_the_hand_computation(toy):
    algo = TokenELBO(TokenELBOConfig(mu=2), seed=SEED)
    batch = toy.batch(ROWS, ADV, step=STEP)
    adapter = toy.adapter()
    with torch.no_grad():
        terms = algo._logp(adapter.logits, toy.MASK, batch, 1)
    old, ref = torch.zeros(4, 2, 3), torch.zeros(4, 2, 3)
    old[:, 1] = terms - torch.tensor(RHO).log()
    ref[:, 1] = terms - torch.tensor(D)
    loss, metrics = algo.loss(adapter, batch, {"old_elbo": old, "ref_elbo": ref}, 1)
    pg = [-1.2, -1.5, -0.4, +1.6, +0.5, +0.5, +0.45, +0.55, -0.75]  # eps 0.5, as worked out in test_diffu_grpo
    k3 = sum(math.exp(-d) - 1 + d for d in [0.1, -0.2, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, -0.5])
    assert loss.item() == pytest.approx((sum(pg) + 0.04 * k3) / 9, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(3 / 9)
    assert metrics["elbo"] == pytest.approx(float(terms.sum(-1).mean()), abs=1e-5)  # mean sequence ELBO


def test_gradient_scales_with_the_mask_weight(toy):
    """At iteration 0 (rho = 1) the gradient of token k is -A c_k grad log p_k / #valid: the token-ELBO
    weights each token's push by its mask weight, which is what makes it noisy (ESPO paper, Sec. 3)."""
    algo = TokenELBO(TokenELBOConfig(mu=1, beta=0.0), seed=SEED)
    adapter = toy.adapter()
    batch = toy.batch([[3, 4, 2]], [1.0], group_size=1, step=STEP)
    loss, _ = algo.loss(adapter, batch, {}, 0)
    (grad,) = torch.autograd.grad(loss, [adapter.model.table])
    c = mask_weights(0, n=1, num_mc=2)[0]
    for k, token in enumerate([3, 4, 2]):
        p = toy.PROBS[k][token]
        # d log p_token / d table[k, token] = 1 - p (table holds log-probabilities, softmax on top)
        assert float(grad[k, token]) == pytest.approx(-c[k] * (1 - p) / 3, rel=1e-4)
        assert float(grad[k, token]) < 0  # descending raises the positive completion's tokens

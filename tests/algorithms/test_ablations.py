"""The ESPO paper's ablations are configurations of one objective, not forks (App. C.1-C.2):
action space (token / sequence) x likelihood (mean-field / ELBO) and the KL estimator (k1 / k2 / k3),
on the context-free toy policy (tests/algorithms/conftest.py), whose proxies are known by hand."""
import math

import pytest
import torch

from dllm_rl.algorithms.diffu_grpo import DiffuGRPO, DiffuGRPOConfig
from dllm_rl.algorithms.espo import ESPO
from dllm_rl.cli import main
from dllm_rl.diffusion.masking import sample_masks
from dllm_rl.pipeline import build_algorithm, resolve_config

SEED, STEP = 7, 3
ROWS = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2]]
ADV = [1.0, -1.0, -0.5, 0.5]


PINNED = ("eps_low=0.2", "eps_high=0.2", "group_masks=false")  # independent of the tiny presets


def espo(*sets, seed=SEED):
    sets = PINNED + sets
    run = resolve_config("espo", "sudoku", "tiny", sets=tuple(f"algorithm.{s}" for s in sets), seed=seed)
    algo = build_algorithm(run)
    assert isinstance(algo, ESPO)
    return algo


def hand_terms(toy, likelihood, iteration):
    """Per-token proxy terms by hand: log p for mean-field; c_k log p for the ELBO (c_k from the keyed masks)."""
    lp = [[toy.logp(k, t) for k, t in enumerate(row)] for row in ROWS]
    if likelihood == "mean_field":
        return lp
    c = [[0.0] * 3 for _ in ROWS]
    for m in range(2):
        masked, weight = sample_masks((SEED, "espo-elbo", STEP, iteration, m), torch.arange(4), 4, 3)
        for i in range(4):
            for h in range(2):
                for k in range(3):
                    c[i][k] += float(masked[i, h, k]) * float(weight[i, h]) / 4
    return [[c[i][k] * lp[i][k] for k in range(3)] for i in range(4)]


@pytest.mark.parametrize("likelihood", ["mean_field", "elbo"])
@pytest.mark.parametrize("action", ["sequence", "token"])
def test_four_way_ablation_cells(toy, action, likelihood):
    """Each cell computes its paper equation (21-24) on its proxy. With rho chosen through a fabricated
    old-policy cache and beta = 0, the loss is plain arithmetic."""
    algo = espo(f"action={action}", f"likelihood={likelihood}", "beta=0.0", "mu=2")
    c = algo.config
    assert (c.action, c.likelihood, c.kl, c.length_norm) == (action, likelihood, "k2", "full")
    batch = toy.batch(ROWS, ADV, step=STEP)
    adapter = toy.adapter()
    terms = torch.tensor(hand_terms(toy, likelihood, 1))
    with torch.no_grad():
        assert torch.allclose(algo._terms(adapter.logits, toy.MASK, batch, 1), terms, atol=1e-5)
    cache = algo.prepare(adapter, batch, 4)
    key = f"old_{likelihood}"
    if action == "sequence":
        assert cache[key].shape == (4, 2)
        rho = [1.5, 0.5, 0.7, 1.1]
        cache[key][:, 1] = terms.sum(-1) - 3 * torch.tensor(rho).log()  # Eq. 22/24: exp(delta / L)
        clip = lambda r: min(max(r, 0.8), 1.2)
        want = sum(-min(r * a, clip(r) * a) for r, a in zip(rho, ADV)) / 4
    else:
        assert cache[key].shape == (4, 2, 3)
        rho = [[1.5, 1.0, 0.9], [0.5, 1.1, 1.0], [1.0, 0.7, 1.3], [0.8, 1.0, 1.25]]
        cache[key][:, 1] = terms - torch.tensor(rho).log()  # Eq. 21/23: one ratio per token
        clip = lambda r: min(max(r, 0.8), 1.2)
        # length_norm full (ESPO): all L positions are actions, averaged over B * L
        want = sum(-min(rho[i][k] * ADV[i], clip(rho[i][k]) * ADV[i]) for i in range(4) for k in range(3)) / 12
    loss, metrics = algo.loss(adapter, batch, cache, 1)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert likelihood in metrics


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_ablation_on_the_sequence_elbo(toy, kind):
    """KL_kind((ELBO_theta - ELBO_ref)) / L per row, weighted by beta (Eq. 9, 10, 28)."""
    algo = espo(f"kl={kind}", "beta=0.5", "mu=2")
    batch = toy.batch(ROWS, ADV, step=STEP)
    terms = torch.tensor(hand_terms(toy, "elbo", 1))
    d = [0.6, -0.3, 1.2, 0.0]
    cache = {"old_elbo": torch.zeros(4, 2), "ref_elbo": torch.zeros(4, 2)}
    cache["old_elbo"][:, 1] = terms.sum(-1)  # ratio 1
    cache["ref_elbo"][:, 1] = terms.sum(-1) - torch.tensor(d)
    loss, metrics = algo.loss(toy.adapter(), batch, cache, 1)
    k = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.exp(-x) - 1 + x}[kind]
    want = -sum(ADV) / 4 + 0.5 * sum(k(x) / 3 for x in d) / 4
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert metrics["kl"] == pytest.approx(sum(k(x) / 3 for x in d) / 4, abs=1e-6)


@pytest.mark.parametrize("likelihood", ["mean_field", "elbo"])
def test_on_policy_sequence_and_token_actions_differ_only_in_the_kl(toy, likelihood):
    """At the first policy iteration every ratio is 1: the sequence and token policy gradients are the same
    (both average over B * L), so with mu = 1 the action axis of the ablation only changes the KL term."""
    grads = {}
    for beta in (0.0, 0.5):
        for action in ("sequence", "token"):
            algo = espo(f"action={action}", f"likelihood={likelihood}", f"beta={beta}", "mu=1")
            adapter = toy.adapter(ref_probs=[[1e-12, 1e-12, 0.2, 0.5, 0.3]] * 3)
            batch = toy.batch(ROWS, ADV, step=STEP)
            loss, _ = algo.loss(adapter, batch, algo.prepare(adapter, batch, 4), 0)
            grads[beta, action] = torch.autograd.grad(loss, [adapter.model.table])[0]
    assert torch.allclose(grads[0.0, "sequence"], grads[0.0, "token"], atol=1e-7)
    assert not torch.allclose(grads[0.5, "sequence"], grads[0.5, "token"], atol=1e-4)


def test_espo_token_mean_field_cell_is_diffu_grpo(toy):
    """With d1's remaining settings the ablation cell token x mean-field of ESPO is diffu-GRPO's loss."""
    d1 = DiffuGRPOConfig(mu=2)
    cell = espo("action=token", "likelihood=mean_field", "kl=k3", "beta=0.04", "eps_low=0.5", "eps_high=0.5",
                "length_norm=valid", "mu=2")
    ref_probs = [[1e-12, 1e-12, 0.3, 0.4, 0.3]] * 3
    batch = toy.batch(ROWS, ADV, step=STEP)
    got = []
    for algo in (cell, DiffuGRPO(d1, seed=SEED)):
        adapter = toy.adapter(ref_probs=ref_probs)
        cache = algo.prepare(adapter, batch, 4)
        loss, _ = algo.loss(adapter, batch, cache, 0)
        got.append((loss.item(), torch.autograd.grad(loss, [adapter.model.table])[0]))
    assert got[0][0] == pytest.approx(got[1][0], abs=1e-7)
    assert torch.allclose(got[0][1], got[1][1], atol=1e-7)


def test_d1_with_k2_is_a_setting(toy):
    """Table 5's "diffu-GRPO + k2": per-token 0.5 d^2 instead of exp(-d) - 1 + d."""
    run = resolve_config("diffu-grpo", "sudoku", "tiny", sets=("algorithm.kl=k2",))
    assert build_algorithm(run).config.kl == "k2"


@pytest.mark.parametrize("setting, needle", [("algorithm.action=tokens", "action must be one of sequence, token"),
                                             ("algorithm.likelihood=exact", "likelihood must be one of mean_field, elbo"),
                                             ("algorithm.baseline=median", "baseline must be one of group_mean, leave_one_out")])
def test_bad_ablation_settings_are_one_line_errors(setting, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--algo", "espo", "--set", setting])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1

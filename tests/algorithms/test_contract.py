"""Every built-in algorithm keeps the plugin contract: micro-batch losses add up to the full-batch
loss (gradients too), the masks are keyed (same seed, same loss), and a 2-step `dllm-rl run` on the
tiny model writes a results file whose training curve carries the algorithm's diagnostics."""
import json

import pytest
import torch

from dllm_rl import registry
from dllm_rl.cli import main
from dllm_rl.config import RolloutConfig

ALGORITHMS = ["espo", "diffu-grpo", "token-elbo", "wd1", "spg", "agrpo"]
TINY = ["--set", "pretrain.steps=30", "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4",
        "--set", "rollout.group_size=2", "--set", "eval.max_examples=12", "--set", "algorithm.mu=2"]
DIAGNOSTICS = {  # what each objective logs besides loss/grad_norm/reward (ratio-free ones log their bounds)
    "espo": {"kl", "clip_frac", "ratio_mean", "ratio_max", "elbo"},
    "diffu-grpo": {"kl", "clip_frac", "ratio_mean", "ratio_max", "mean_field"},
    "token-elbo": {"kl", "clip_frac", "ratio_mean", "ratio_max", "elbo"},
    "wd1": {"mean_field", "w_pos_max"},
    "spg": {"lower_bound", "upper_bound", "neg_frac"},
    "agrpo": {"kl", "clip_frac", "ratio_mean", "ratio_max", "step_logp"},
}


def test_every_builtin_is_covered():
    assert set(registry.entries("algorithms")) >= set(ALGORITHMS)


def build(name, seed=3):
    cls = registry.get("algorithms", name).load()
    params = {"mu": 2}
    if "beta" in {f for f in cls.Config.__dataclass_fields__}:
        params["beta"] = 0.05  # exercise the reference pass everywhere it exists
    algo = cls(cls.Config(**params), seed=seed)
    algo.rollout = RolloutConfig(temperature=1.0, block_length=2)
    return algo


def batch_for(toy):
    rows = [[3, 4, 2], [4, 2, 2], [3, 3, 2], [2, 2, 2], [4, 4, 3], [3, 2, 2]]
    adv = [1.0, -1.0, -0.5, 0.5, 0.2, -0.2]
    commit = [[1, 0, 2], [0, 1, 2], [2, 1, 0], [0, 0, 1], [1, 2, 0], [2, 0, 1]]
    old = [[toy.logp(k, t) - 0.05 * (i - k) for k, t in enumerate(r)] for i, r in enumerate(rows)]
    return toy.batch(rows, adv, step=5, commit_step=commit, sample_logprobs=old)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_micro_batch_losses_and_gradients_add_up(toy, name):
    algo = build(name)
    ref = [[1e-12, 1e-12, 0.4, 0.3, 0.3]] * 3
    adapter = toy.adapter(ref_probs=ref)
    batch = batch_for(toy)
    cache = algo.prepare(adapter, batch, 4)
    assert cache == {} or all(v.shape[0] == 6 for v in cache.values())
    with torch.no_grad():  # move theta away from theta_old so that iteration 1 has ratios != 1
        adapter.model.table.add_(0.1 * torch.arange(15.0).view(3, 5).sin())
    for it in range(2):
        full, _ = algo.loss(adapter, batch, cache, it)
        (want,) = torch.autograd.grad(full, [adapter.model.table])
        total, grad = 0.0, torch.zeros_like(want)
        for idx in batch.micro_batches(4):
            part, metrics = algo.loss(adapter, batch.select(idx), {k: v[idx] for k, v in cache.items()}, it)
            total += part.item()
            grad += torch.autograd.grad(part, [adapter.model.table])[0]
            assert all(isinstance(v, float) for v in metrics.values())
        assert total == pytest.approx(full.item(), abs=1e-6)
        assert torch.allclose(grad, want, atol=1e-6)
        assert float(want.abs().max()) > 1e-4  # not vacuous


@pytest.mark.parametrize("name", ALGORITHMS)
def test_losses_are_keyed_by_the_run_seed(toy, name):
    batch = batch_for(toy)
    losses = []
    for seed in (3, 3, 4):
        algo = build(name, seed)
        adapter = toy.adapter(ref_probs=[[1e-12, 1e-12, 0.4, 0.3, 0.3]] * 3)
        losses.append(algo.loss(adapter, batch, algo.prepare(adapter, batch, 6), 1)[0].item())
    assert losses[0] == losses[1]
    if name in ("espo", "token-elbo", "spg"):  # the toy ignores context, so only mask weights can differ
        assert losses[0] != losses[2]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "dllm_rl_cache"))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_two_step_run_on_the_tiny_model(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--algo", name, "--results-dir", str(tmp_path), "--run-dir", str(tmp_path / "runs"), *TINY])
        raise SystemExit(0)
    assert exc.value.code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / f"tiny__sudoku__{name}__seed0.json").read_text())
    assert result["algorithm"] == name and result["training"]["steps"] == 2
    for point in result["training"]["curve"]:
        assert DIAGNOSTICS[name] | {"loss", "grad_norm", "reward", "zero_var_frac"} <= set(point)
        assert all(v == v for v in point.values())  # no NaN
    assert result["metrics"]["24"]["n"] == 12

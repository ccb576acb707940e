"""Rows whose loss term is exactly zero (zero advantage, no KL term) are skipped before any forward
pass; the update is the one the full batch gives."""
import pytest
import torch

import dllm_rl.rl.policy_gradient as pg
from dllm_rl.rl.policy_gradient import PolicyGradient, PolicyGradientConfig


def test_only_a_kl_term_keeps_zero_advantage_rows():
    class B:
        advantages = torch.tensor([0.5, 0.0, -0.0, -0.25])

    assert PolicyGradient(PolicyGradientConfig(beta=0.0)).rows_with_gradient(B).tolist() == [True, False, False, True]
    assert PolicyGradient(PolicyGradientConfig(beta=0.01)).rows_with_gradient(B) is None


def test_skipping_zero_rows_gives_the_full_batch_update(tmp_path, tiny, h, monkeypatch):
    """Positive advantages only and no KL: most rows carry no gradient. Skipping them runs the
    likelihood on fewer rows yet gives the same losses and, after two steps of mu 2, the same weights."""
    seen = []
    terms = pg.likelihood_terms

    def counting(kind, logits_fn, seqs, *args, **kwargs):
        seen.append(seqs.completion_ids.shape[0])
        return terms(kind, logits_fn, seqs, *args, **kwargs)

    monkeypatch.setattr(pg, "likelihood_terms", counting)
    args = [*tiny, "--set", "algorithm.beta=0", "--set", "algorithm.negative_weight=0", "--set", "eval.base=false",
            "--set", "optim.lr=1e-3"]
    rows, out = {}, {}
    for name, skip in (("skip", "true"), ("full", "false")):
        seen.clear()
        code, err = h.cli(["run", *args, "--set", f"optim.skip_zero_rows={skip}", *h.dirs(tmp_path, name)])
        assert code == 0, err
        rows[name] = sum(seen)
        out[name] = h.result_of(tmp_path, name)
    assert 0 < rows["skip"] < rows["full"]
    curve = {k: [s["loss"] for s in out[k]["training"]["curve"]] for k in out}
    assert any(abs(x) > 0 for x in curve["full"])  # some group had a solved row: the update is not empty
    assert curve["skip"] == pytest.approx(curve["full"], rel=1e-5, abs=1e-8)
    diff = h.max_weight_diff(h.weights(h.run_dir_of(tmp_path, "skip") / "final"),
                             h.weights(h.run_dir_of(tmp_path, "full") / "final"))
    assert diff < 1e-5

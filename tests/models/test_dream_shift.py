"""Dream predicts token k from position k-1: the family's adapter realigns its logits, so the ELBO of
a completion scores each token with the prediction made one position earlier."""
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.diffusion.likelihood import Sequences, elbo_terms
from dllm_rl.pipeline import load_model


class NextTokenOracle(nn.Module):
    """Hand-crafted 'Dream': whatever the input, position j puts all its mass on ``sequence[j+1]``
    (the prediction for position j+1 made at j), and on an unrelated token at the last position."""

    def __init__(self, sequence: list[int], vocab: int, other: int):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the adapter a device
        self.sequence, self.vocab, self.other = sequence, vocab, other

    def forward(self, input_ids, attention_mask=None, **_):
        b, t = input_ids.shape
        assert t == len(self.sequence)
        logits = torch.full((b, t, self.vocab), -30.0)
        for j in range(t):
            logits[:, j, self.sequence[j + 1] if j + 1 < t else self.other] = 30.0
        return MaskedLMOutput(logits=logits + self.anchor)


@pytest.fixture(scope="module")
def dream(checkpoints):
    return load_model(RunConfig(model=ModelConfig(name=str(checkpoints["dream"]))), None)


def test_dream_family_shifts_and_llada_does_not(dream, checkpoints):
    assert dream.shift_logits is True
    llada = load_model(RunConfig(model=ModelConfig(name=str(checkpoints["llada"]))), None)
    assert llada.shift_logits is False


def test_adapter_reads_position_k_at_k_minus_1(dream):
    ids = torch.randint(6, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = dream.model(input_ids=ids).logits
        aligned = dream.logits(ids)
    assert torch.equal(aligned[:, 1:], raw[:, :-1])


def test_elbo_uses_the_prediction_made_one_position_earlier(dream):
    prompt = [10, 11, 12, 13]
    completion = [20, 21, 22, 23, 24, 25]
    oracle = NextTokenOracle(prompt + completion, vocab=128, other=5)
    seqs = Sequences(prompt_ids=torch.tensor([prompt]), prompt_mask=torch.ones(1, 4, dtype=torch.long),
                     completion_ids=torch.tensor([completion]), rows=torch.tensor([0]), num_rows=1)
    adapter = dream
    saved = adapter.model
    try:
        adapter.model = oracle
        elbo = elbo_terms(adapter.logits, seqs, adapter.mask_id, ("shift-test",), num_samples=4).sum(-1)
        adapter.shift_logits = False  # reading position k at k would score the wrong token everywhere
        unshifted = elbo_terms(adapter.logits, seqs, adapter.mask_id, ("shift-test",), num_samples=4).sum(-1)
    finally:
        adapter.model, adapter.shift_logits = saved, True
    # every completion token is predicted with probability ~1 from one position earlier: ELBO ~ 0
    assert elbo.item() > -1e-4
    # without the shift each scored token gets log p ~ -60, so the ELBO is hugely negative
    assert unshifted.item() < -100

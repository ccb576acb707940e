"""A context-free toy policy with known probabilities, so losses can be written out by hand.

The toy predicts every completion position k from a fixed table of probabilities PROBS[k] whatever
the input (masked or not, prompt masked or not): every likelihood proxy then has a closed form
(mean-field phi_k = log PROBS[k][y_k]; the ELBO's terms are mask weights times the same log-probs).
Its parameters are those log-probabilities, so gradients move exactly the probabilities we check."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask

PAD, MASK, EOS, A, B = 0, 1, 2, 3, 4
VOCAB, TP, L = 5, 2, 3
TINY_P = 1e-12  # probability of PAD and MASK (never sampled); keeps log-probs finite

# PROBS[k] = distribution of completion position k over (PAD, MASK, EOS, A, B)
PROBS = [[TINY_P, TINY_P, 0.25, 0.5, 0.25],
         [TINY_P, TINY_P, 0.5, 0.25, 0.25],
         [TINY_P, TINY_P, 0.8, 0.1, 0.1]]


class ToyPolicy(nn.Module):
    def __init__(self, probs=PROBS):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(probs, dtype=torch.float64).log().float())
        self.inputs = []  # every input_ids it was called with, for tests of what the estimators feed it

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        b, t = input_ids.shape
        logits = torch.zeros(b, t, VOCAB)
        logits = torch.cat([logits[:, : t - L], self.table.expand(b, L, VOCAB)], dim=1)
        return SimpleNamespace(logits=logits)


def toy_adapter(probs=PROBS, ref_probs=None):
    ref = ToyPolicy(ref_probs) if ref_probs is not None else None
    return ModelAdapter(model=ToyPolicy(probs), tokenizer=None, mask_id=MASK, eos_id=EOS, pad_id=PAD,
                        stop_ids=(EOS,), reference_model=ref)


def toy_batch(completions, advantages, *, step=3, group_size=2, commit_step=None, sample_logprobs=None, rewards=None):
    """A rollout batch of prompts [5, 6] (no padding) and the given completions of length L."""
    completion = torch.tensor(completions)
    n = completion.shape[0]
    prompt_ids = torch.tensor([[5, 6]] * n)
    valid = valid_token_mask(completion, (EOS,))
    adv = torch.tensor(advantages, dtype=torch.float32)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), completion_ids=completion,
                        valid_mask=valid, rewards=adv.clone() if rewards is None else torch.tensor(rewards),
                        advantages=adv, rows=torch.arange(n), groups=torch.arange(n) // group_size,
                        commit_step=torch.zeros(n, L, dtype=torch.long) if commit_step is None else torch.tensor(commit_step),
                        sample_logprobs=torch.zeros(n, L) if sample_logprobs is None else torch.tensor(sample_logprobs),
                        step=step, num_rows=n, num_groups=n // group_size, total_valid_tokens=int(valid.sum()))


def logp(k: int, token: int, probs=PROBS) -> float:
    """log PROBS[k][token], the hand value of every proxy's per-token log-prob."""
    return math.log(probs[k][token])


def sgd_step(adapter, loss, lr=0.1):
    """One plain gradient step on the toy's table; returns the new probabilities [L, V]."""
    (grad,) = torch.autograd.grad(loss, [adapter.model.table])
    with torch.no_grad():
        adapter.model.table -= lr * grad
    return torch.softmax(adapter.model.table.detach().double(), -1)


@pytest.fixture
def toy():
    return SimpleNamespace(adapter=toy_adapter, batch=toy_batch, logp=logp, sgd_step=sgd_step, PROBS=PROBS,
                           PAD=PAD, MASK=MASK, EOS=EOS, A=A, B=B, L=L, TP=TP)

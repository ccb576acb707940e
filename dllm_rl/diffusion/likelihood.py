"""Likelihood estimators of a completion given its prompt: the sequence ELBO with per-token terms
(ESPO, token-level ELBO) and the one-step mean-field proxy (d1, wd1). All log-probs in fp32."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .masking import prompt_masks, sample_masks


@dataclass
class Sequences:
    """Prompts (left-padded) and fixed-length completions of a batch of rows."""

    prompt_ids: torch.Tensor  # [B, Tp]
    prompt_mask: torch.Tensor  # [B, Tp], 0 on left padding
    completion_ids: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [B] index of each row in its rollout batch (keys the masks)
    num_rows: int  # size of the rollout batch (for stratification)


def token_logprobs(logits_fn, seqs: Sequences, completion_in: torch.Tensor,
                   prompt_in: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y^k | inputs) [N, L] for every completion position, from fp32 log-softmax.

    ``completion_in`` [N, L] is the (partially masked) completion fed to the model, with N a
    multiple of B (copies of the batch stacked along the first dimension)."""
    reps = completion_in.shape[0] // seqs.prompt_ids.shape[0]
    prompt = (prompt_in if prompt_in is not None else seqs.prompt_ids).repeat(reps, 1)
    attn = torch.cat([seqs.prompt_mask.repeat(reps, 1), torch.ones_like(completion_in)], dim=1)
    logits = logits_fn(torch.cat([prompt, completion_in], dim=1), attn)[:, prompt.shape[1]:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, seqs.completion_ids.repeat(reps, 1).unsqueeze(-1)).squeeze(-1)


def elbo_terms(logits_fn, seqs: Sequences, mask_id: int, key: tuple, *, num_samples: int = 2,
               coupled: bool = True, stratified: bool = True) -> torch.Tensor:
    """Per-token contributions L^k [B, L] of the discrete-masking sequence ELBO (their sum over k
    is the ELBO estimate), averaged over ``num_samples`` Monte-Carlo mask draws keyed by ``key``."""
    b, length = seqs.completion_ids.shape
    dev = seqs.completion_ids.device
    total = torch.zeros(b, length, device=dev)
    for m in range(num_samples):
        masked, weight = sample_masks((*key, m), seqs.rows.cpu(), seqs.num_rows, length, coupled=coupled, stratified=stratified)
        masked, weight = masked.to(dev), weight.to(dev)
        p = masked.shape[1]
        flat = masked.transpose(0, 1).reshape(p * b, length)  # [P*B, L], copy-major like token_logprobs
        inputs = torch.where(flat, torch.full_like(flat, mask_id, dtype=torch.long), seqs.completion_ids.repeat(p, 1))
        logp = token_logprobs(logits_fn, seqs, inputs).view(p, b, length).transpose(0, 1)
        total = total + (masked * weight[..., None] * logp).sum(1) / p
    return total / num_samples


def mean_field_logprobs(logits_fn, seqs: Sequences, mask_id: int, key: tuple, *,
                        p_mask_prompt: float = 0.15) -> torch.Tensor:
    """d1's one-step proxy phi(y^k) = log p(y^k | randomly masked prompt, fully masked completion) [B, L]."""
    masked_prompt = prompt_masks(key, seqs.rows.cpu(), seqs.prompt_mask.cpu(), p_mask_prompt).to(seqs.prompt_ids.device)
    prompt_in = seqs.prompt_ids.masked_fill(masked_prompt, mask_id)
    completion_in = torch.full_like(seqs.completion_ids, mask_id)
    return token_logprobs(logits_fn, seqs, completion_in, prompt_in)

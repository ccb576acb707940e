"""Likelihood estimators of a completion given its prompt: the sequence ELBO with per-token terms
(ESPO, token-level ELBO), the one-step mean-field proxy (d1, wd1), SPG's block-masked lower and
upper bounds, and per-step log-probs of the sampler's own denoising steps (AGRPO). All log-probs in fp32,
from the output head at the completion positions only and without a full-vocabulary fp32 log-softmax."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .logprobs import target_logprobs
from .masking import prompt_masks, sample_masks
from .sampler import logits_at, sampling_logits

LIKELIHOODS = ("mean_field", "elbo")


@dataclass
class Sequences:
    """Prompts (left-padded) and fixed-length completions of a batch of rows."""

    prompt_ids: torch.Tensor  # [B, Tp]
    prompt_mask: torch.Tensor  # [B, Tp], 0 on left padding
    completion_ids: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [B] index of each row in its rollout batch (keys the masks)
    num_rows: int  # size of the rollout batch (for stratification)


def completion_logits(logits_fn, seqs: Sequences, completion_in: torch.Tensor,
                      prompt_in: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [N, L, V] at the completion positions for a (partially masked) ``completion_in`` [N, L],
    N a multiple of B (copies of the batch stacked along the first dimension, copy-major)."""
    reps = completion_in.shape[0] // seqs.prompt_ids.shape[0]
    prompt = (prompt_in if prompt_in is not None else seqs.prompt_ids).repeat(reps, 1)
    attn = torch.cat([seqs.prompt_mask.repeat(reps, 1), torch.ones_like(completion_in)], dim=1)
    return logits_at(logits_fn, torch.cat([prompt, completion_in], dim=1), attn, slice(prompt.shape[1], None))


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of ``logits`` [N, L, V] in fp32 at ``targets`` [N, L], one chunk of rows at a time."""
    return target_logprobs(logits, targets.to(logits.device))


def token_logprobs(logits_fn, seqs: Sequences, completion_in: torch.Tensor,
                   prompt_in: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y^k | inputs) [N, L] for every completion position, from fp32 log-softmax.

    ``completion_in`` [N, L] is the (partially masked) completion fed to the model, with N a
    multiple of B (copies of the batch stacked along the first dimension)."""
    reps = completion_in.shape[0] // seqs.prompt_ids.shape[0]
    logits = completion_logits(logits_fn, seqs, completion_in, prompt_in)
    return gather_logprobs(logits, seqs.completion_ids.repeat(reps, 1))


def masked_logprobs(logits_fn, seqs: Sequences, masked: torch.Tensor, mask_id: int,
                    prompt_in: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y^k | y with ``masked`` [B, P, L] positions masked, x) [B, P, L]: P masked copies of each
    completion in one forward pass (positions that are not masked get the model's clean-context value)."""
    b, p, length = masked.shape
    flat = masked.transpose(0, 1).reshape(p * b, length)  # [P*B, L], copy-major like token_logprobs
    inputs = torch.where(flat, torch.full_like(flat, mask_id, dtype=torch.long), seqs.completion_ids.repeat(p, 1))
    return token_logprobs(logits_fn, seqs, inputs, prompt_in).view(p, b, length).transpose(0, 1)


def elbo_terms(logits_fn, seqs: Sequences, mask_id: int, key: tuple, *, num_samples: int = 2,
               coupled: bool = True, stratified: bool = True) -> torch.Tensor:
    """Per-token contributions L^k [B, L] of the discrete-masking sequence ELBO (their sum over k
    is the ELBO estimate), averaged over ``num_samples`` Monte-Carlo mask draws keyed by ``key``."""
    length = seqs.completion_ids.shape[1]
    total = 0.0
    for m in range(num_samples):
        masked, weight = sample_masks((*key, m), seqs.rows.cpu(), seqs.num_rows, length, coupled=coupled, stratified=stratified)
        logp = masked_logprobs(logits_fn, seqs, masked.to(seqs.completion_ids.device), mask_id)  # fp32, logits' device
        masked, weight = masked.to(logp.device), weight.to(logp.device, torch.float32)
        total = total + (masked * weight[..., None] * logp).sum(1) / masked.shape[1]
    return total / num_samples


def mean_field_logprobs(logits_fn, seqs: Sequences, mask_id: int, key: tuple, *,
                        p_mask_prompt: float = 0.15) -> torch.Tensor:
    """d1's one-step proxy phi(y^k) = log p(y^k | randomly masked prompt, fully masked completion) [B, L]."""
    masked_prompt = prompt_masks(key, seqs.rows.cpu(), seqs.prompt_mask.cpu(), p_mask_prompt).to(seqs.prompt_ids.device)
    prompt_in = seqs.prompt_ids.masked_fill(masked_prompt, mask_id)
    completion_in = torch.full_like(seqs.completion_ids, mask_id)
    return token_logprobs(logits_fn, seqs, completion_in, prompt_in)


def likelihood_terms(kind: str, logits_fn, seqs: Sequences, mask_id: int, key: tuple, *, num_samples: int = 2,
                     coupled: bool = True, stratified: bool = True, p_mask_prompt: float = 0.15) -> torch.Tensor:
    """Per-token terms [B, L] of a sequence log-likelihood proxy, whose sum over k is the proxy:
    ``elbo`` (the ELBO's per-token contributions L^k) or ``mean_field`` (d1's one-step log-probs)."""
    if kind == "elbo":
        return elbo_terms(logits_fn, seqs, mask_id, key, num_samples=num_samples, coupled=coupled, stratified=stratified)
    if kind == "mean_field":
        return mean_field_logprobs(logits_fn, seqs, mask_id, key, p_mask_prompt=p_mask_prompt)
    raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {kind!r}")


def masked_mean_logprob(logp: torch.Tensor, masked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """SPG's lower-bound surrogate [B]: per mask sample, the mean log-prob of the masked valid tokens,
    averaged over the P samples (``logp``, ``masked`` [B, P, L]; ``valid`` [B, L])."""
    m = masked & valid[:, None, :].bool()
    return ((logp * m).sum(-1) / m.sum(-1).clamp(min=1)).mean(1)


def eubo_mean(logp: torch.Tensor, masked: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """SPG's upper-bound surrogate [B] (Renyi-style, order ``beta`` >= 1): per valid token masked in at
    least one sample, (1/beta) log of the Monte-Carlo mean over samples of 1[masked] p(y^k)^beta / t,
    with t the sample's fraction of masked valid tokens; averaged over those tokens. Log-sum-exp in fp32."""
    m = masked & valid[:, None, :].bool()
    t = m.sum(-1).float() / valid.sum(-1, keepdim=True).float().clamp(min=1)  # [B, P]
    seen = m.any(1)  # [B, L]
    x = beta * logp - torch.log(t.clamp(min=1e-8))[..., None]
    x = x.masked_fill(~m, float("-inf")).masked_fill(~seen[:, None, :], 0.0)  # unseen columns stay finite
    per_token = (torch.logsumexp(x, dim=1) - math.log(masked.shape[1])) / beta  # [B, L]
    return (per_token * seen).sum(-1) / seen.sum(-1).clamp(min=1)


def step_inputs(completion_ids: torch.Tensor, commit_step: torch.Tensor, steps: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The sampler's state [B, n, L] just before each of the denoising ``steps`` [B, n]: tokens committed
    at an earlier step are in place, every other position is still masked."""
    done = commit_step[:, None, :] < steps[..., None]
    return torch.where(done, completion_ids[:, None, :], torch.full_like(done, mask_id, dtype=torch.long))


def denoising_step_logprobs(logits_fn, seqs: Sequences, commit_step: torch.Tensor, steps: torch.Tensor, mask_id: int,
                            temperature: float, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """log pi(y^k | state before step s) [B, n, L] under the sampling distribution (mask token excluded,
    temperature, top-k/top-p) at each rebuilt denoising state of ``steps`` [B, n]; the entries of the
    tokens committed at s are that step's action log-probs (AGRPO)."""
    if temperature <= 0:
        raise ValueError("per-step log-probs need temperature > 0 (greedy sampling has no density)")
    b, n = steps.shape
    states = step_inputs(seqs.completion_ids, commit_step, steps, mask_id)  # [B, n, L]
    flat = states.transpose(0, 1).reshape(n * b, -1)  # copy-major
    raw = completion_logits(logits_fn, seqs, flat)
    targets = seqs.completion_ids.repeat(n, 1).to(raw.device)
    if top_k is None and (top_p is None or top_p >= 1.0):  # temperature and the mask column, chunked
        logp = target_logprobs(raw, targets, temperature=temperature, exclude=mask_id)
    else:  # top-k/top-p need the whole filtered row
        raw = raw.float().index_fill(-1, torch.tensor([mask_id], device=raw.device), float("-inf"))
        logp = gather_logprobs(sampling_logits(raw, temperature, top_k, top_p), targets)
    return logp.view(n, b, -1).transpose(0, 1)

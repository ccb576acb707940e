"""Keyed mask sampling for likelihood estimators.

Every random choice is drawn from a ``torch.Generator`` seeded from an explicit key (run seed,
rollout step, policy iteration, Monte-Carlo index, row), so the masks seen by the current, old and
reference policies are identical and do not depend on how a batch is split into micro-batches."""
from __future__ import annotations

import hashlib

import torch


def key_seed(*key: object) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def keyed_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from ``key``."""
    return torch.Generator().manual_seed(key_seed(*key))


def mask_counts(key: tuple, rows: torch.Tensor, num_rows: int, length: int, *, coupled: bool,
                stratified: bool) -> torch.Tensor:
    """Number of masked completion tokens l per row.

    Coupled draws l from {0..L} (its complement masks L-l), uncoupled from {1..L}. Stratified
    sampling assigns the rows of the whole rollout batch (``num_rows``) to evenly spaced strata of
    one uniform offset, through a keyed permutation, so each row's l is still exactly uniform."""
    low, n_values = (0, length + 1) if coupled else (1, length)
    gen = keyed_generator(*key, "counts")
    if stratified:
        offset = torch.rand((), generator=gen, dtype=torch.float64)
        stratum = torch.randperm(num_rows, generator=gen)[rows]
        u = (stratum.double() + offset) / num_rows
    else:
        u = torch.rand(num_rows, generator=gen, dtype=torch.float64)[rows]
    return low + (u * n_values).floor().long().clamp(max=n_values - 1)


def sample_masks(key: tuple, rows: torch.Tensor, num_rows: int, length: int, *, coupled: bool = True,
                 stratified: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks and ELBO weights for the completion of each row.

    Returns ``masked`` [B, P, L] (bool) and ``weight`` [B, P] with P = 2 for coupled sampling (a mask
    and its complement, which partition the completion) and P = 1 otherwise. Weights make
    ``sum_k weight * 1[masked] * log p`` unbiased for the ELBO: (L+1)/l coupled, L/l uncoupled."""
    counts = mask_counts(key, rows, num_rows, length, coupled=coupled, stratified=stratified)
    order = torch.stack([torch.randperm(length, generator=keyed_generator(*key, "row", int(r))) for r in rows])
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(length).expand_as(order))
    first = rank < counts[:, None]  # a uniform subset of size l
    if not coupled:
        return first[:, None, :], (length / counts.double())[:, None].float()
    masked = torch.stack([first, ~first], dim=1)
    sizes = torch.stack([counts, length - counts], dim=1).double()
    weight = torch.where(sizes > 0, (length + 1) / sizes.clamp(min=1), torch.zeros_like(sizes))
    return masked, weight.float()


def prompt_masks(key: tuple, rows: torch.Tensor, prompt_mask: torch.Tensor, p_mask: float) -> torch.Tensor:
    """d1's random prompt masking: each real prompt token masked i.i.d. with probability ``p_mask``."""
    width = prompt_mask.shape[1]
    draws = torch.stack([torch.rand(width, generator=keyed_generator(*key, "prompt", int(r))) for r in rows])
    return (draws < p_mask) & prompt_mask.bool()

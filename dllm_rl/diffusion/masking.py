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
    """d1's random prompt masking: each real prompt token masked i.i.d. with probability ``p_mask``.

    A row draws one uniform per real token, in order, so its mask depends only on (key, row) and its
    own prompt, never on the padded width of its batch (one process and N processes agree)."""
    real = prompt_mask.bool()
    out = torch.zeros_like(real)
    for i, r in enumerate(rows.tolist()):
        cols = real[i].nonzero().squeeze(1)
        out[i, cols] = torch.rand(len(cols), generator=keyed_generator(*key, "prompt", int(r))) < p_mask
    return out


def block_masks(key: tuple, rows: torch.Tensor, valid_lengths: torch.Tensor, length: int, block_length: int,
                num_samples: int) -> torch.Tensor:
    """SPG's block-wise masks [B, P, L] (P = ``num_samples``), shaped like a semi-autoregressive
    denoising state: pick a block b among those holding valid tokens, keep earlier blocks clean, mask a
    uniform number (1..n_b) of block b's n_b valid tokens, and mask everything after them (later blocks
    and the EOS padding). Blocks are drawn without replacement per row while there are enough."""
    if block_length < 1 or num_samples < 1:
        raise ValueError("block_length and num_samples must be at least 1")
    out = torch.zeros(len(rows), num_samples, length, dtype=torch.bool)
    pos = torch.arange(length)
    for i, (r, valid) in enumerate(zip(rows.tolist(), valid_lengths.tolist())):
        valid = max(1, min(int(valid), length))
        gen = keyed_generator(*key, "block", int(r))
        n_blocks = (valid - 1) // block_length + 1
        order = torch.randperm(n_blocks, generator=gen)
        for j in range(num_samples):
            b = int(order[j % n_blocks])
            start = b * block_length
            n_b = min(block_length, valid - start)
            count = int(torch.randint(1, n_b + 1, (), generator=gen))
            chosen = torch.randperm(n_b, generator=gen)[:count] + start
            out[i, j] = pos >= start + n_b
            out[i, j, chosen] = True
    return out


def stratified_steps(key: tuple, rows: torch.Tensor, num_steps: int, per_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising steps to revisit, ``per_row`` per row out of ``num_steps``: one uniform step in each
    of ``per_row`` contiguous, near-equal strata of 0..num_steps-1, with the stratum size as its weight
    (so ``sum_j weight_j f(step_j)`` is unbiased for ``sum_s f(s)``). Returns steps and weights [B, n]."""
    if num_steps < 1 or per_row < 1:
        raise ValueError("num_steps and per_row must be at least 1")
    n = min(per_row, num_steps)
    bounds = [(j * num_steps) // n for j in range(n + 1)]
    sizes = torch.tensor([bounds[j + 1] - bounds[j] for j in range(n)], dtype=torch.float32)
    starts = torch.tensor(bounds[:-1])
    steps = torch.stack([starts + (torch.rand(n, generator=keyed_generator(*key, "steps", int(r)), dtype=torch.float64)
                                   * sizes.double()).floor().long() for r in rows])
    return steps, sizes.expand(len(rows), n).clone()

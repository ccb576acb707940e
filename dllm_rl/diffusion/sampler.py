"""Masked-diffusion sampler: iterative unmasking with low-confidence or random remasking,
semi-autoregressive blocks, temperature sampling with fp64 Gumbel noise (greedy at temperature 0),
and correct handling of left-padded batches: every row draws its noise from its own generator, so
a padded batch gives the same output as each row sampled alone.

Cheaper-rollout options: confidence-threshold parallel decoding (Fast-dLLM: commit every position
of the current block whose confidence clears a threshold, at least one per step, so the step count
adapts per row; optionally capped by a step budget whose fixed schedule is the floor), early stop (a
row whose remaining masked positions all lie in blocks after a finished block containing EOS is
filled with EOS and leaves the batch) and approximate prompt caching. Finished rows drop out of the
forward passes; ``row_nfe`` counts each row's own forward passes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

REMASKING = ("low_confidence", "random", "entropy", "margin")


@dataclass
class SamplerConfig:
    """Defaults follow LLaDA's evaluation protocol: blocks of 32, two tokens per step, greedy."""

    gen_length: int = 256
    steps: int | None = None
    """Denoising steps in total; None = gen_length // 2 (two tokens per step). With ``threshold`` it is
    a budget: at most this many steps (spread over blocks as in the fixed schedule), None = no cap."""
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    top_k: int | None = None
    top_p: float | None = None
    threshold: float | None = None
    """Confidence-threshold parallel decoding (Fast-dLLM): each step commits every masked position of
    the row's current block whose confidence (low_confidence: the model's probability of the chosen
    token; margin: its top-2 gap) is above this, and at least the most confident one; with ``steps``
    set, also at least what the fixed schedule of that many steps would commit given the row's remaining
    positions and steps in its block (the fixed schedule is the floor; threshold 1.0 reproduces it).
    None = the fixed schedule; 1.0 and ``steps`` None = one token per step."""
    prompt_cache: bool = False
    """Approximate prompt caching: the prompt's keys and values are computed once, in the first pass
    (with the completion all masks), and reused by every later pass, which runs over the completion
    positions only. Exact for a one-layer model; otherwise an approximation whose accuracy impact
    BENCHMARKS.md measures. Needs ``prompt_cache_fns`` in :func:`generate`."""
    prompt_cache_refresh: int = 0
    """With ``prompt_cache``: a full pass that refreshes the cache every this many passes of a row
    (0 = only the first pass)."""
    eos_id: int | None = None
    """Early stop: once every masked position of a row lies in blocks after a fully committed block
    containing this token, the rest is filled with it (log-prob 0) without further forward passes.
    None = off."""

    def __post_init__(self):
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.threshold is not None:
            if self.remasking not in ("low_confidence", "margin"):
                raise ValueError(f"threshold needs a probability-valued confidence (remasking low_confidence or margin), "
                                 f"got remasking={self.remasking!r}")
            if not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prompt_cache_refresh < 0:
            raise ValueError(f"prompt_cache_refresh must be >= 0 (0 = never), got {self.prompt_cache_refresh}")

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else max(1, self.gen_length // 2)


@dataclass
class SampleOutput:
    completions: torch.Tensor  # [B, L]
    commit_step: torch.Tensor  # [B, L] denoising step at which each token was committed
    logprobs: torch.Tensor  # [B, L] log-prob of each committed token under the sampling distribution
    nfe: int  # batched forward passes (number of function evaluations); the max of row_nfe
    row_nfe: torch.Tensor  # [B] forward passes each row took part in (what it costs sampled alone)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids [B, T] and an attention mask [B, T]."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
    return ids, mask


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of fp64 logits [..., V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def sampling_logits(raw: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """Logits of the distribution tokens are sampled from (its log-softmax is what the sampler records):
    temperature scaling (none at temperature 0, where the sampler takes the argmax), then top-k/top-p.
    Shared with objectives that re-evaluate the sampler's own distribution (AGRPO)."""
    return _filter(raw / temperature if temperature > 0 else raw, top_k, top_p)


def _transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps so that ``n_masked`` are committed in all."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _block_steps(gen_length: int, block_length: int, steps: int) -> list[tuple[int, int, int]]:
    """(start, end, steps) of each semi-autoregressive block; steps spread as evenly as possible."""
    starts = list(range(0, gen_length, block_length))
    if steps < len(starts):
        raise ValueError(f"steps ({steps}) must be at least the number of blocks ({len(starts)})")
    per = _transfer_counts(steps, len(starts))
    return [(s, min(s + block_length, gen_length), max(1, n)) for s, n in zip(starts, per)]


def _fixed_plan(cfg: SamplerConfig) -> list[tuple[int, int, int]]:
    """(block start, block end, tokens to commit) of every step of the fixed schedule."""
    return [(start, end, n) for start, end, n_steps in _block_steps(cfg.gen_length, cfg.block_length, cfg.num_steps)
            for n in _transfer_counts(end - start, n_steps)]


def _propose(raw: torch.Tensor, cfg: SamplerConfig, mask_id: int, generators: list[torch.Generator] | None):
    """Token choice, its log-prob under the sampling distribution and the remasking confidence [b, L]
    from fp64 logits [b, L, V] (one generator per row, drawn in row order)."""
    raw[..., mask_id] = float("-inf")  # never commit the mask token itself
    logits = sampling_logits(raw, cfg.temperature, cfg.top_k, cfg.top_p)
    if cfg.temperature > 0:
        noise = torch.stack([torch.rand(logits.shape[1:], generator=g, dtype=torch.float64) for g in generators])
        gumbel = -torch.log(-torch.log(noise.clamp(min=1e-300)))
        chosen = (logits + gumbel).argmax(-1)
    else:
        chosen = logits.argmax(-1)
    logp = torch.log_softmax(logits, -1).gather(-1, chosen[..., None]).squeeze(-1)
    if cfg.remasking == "low_confidence":  # the model's own (unfiltered) probability, as in LLaDA
        conf = torch.softmax(raw, -1).gather(-1, chosen[..., None]).squeeze(-1)
    elif cfg.remasking == "entropy":  # Dream's default: lowest entropy of the sampling distribution first
        conf = -torch.special.entr(torch.softmax(logits, -1)).sum(-1)
    elif cfg.remasking == "margin":  # Dream's topk_margin: largest gap between the two most likely tokens
        top2 = torch.softmax(logits, -1).topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    else:
        conf = torch.stack([torch.rand(raw.shape[1], generator=g, dtype=torch.float64) for g in generators])
    return chosen, logp, conf


@torch.no_grad()
def generate(logits_fn, prompts: list[list[int]], mask_id: int, pad_id: int, cfg: SamplerConfig,
             generators: list[torch.Generator] | None = None, prompt_cache_fns=None) -> SampleOutput:
    """Sample completions of ``cfg.gen_length`` tokens for token-id ``prompts``.

    ``logits_fn(input_ids, attention_mask)`` returns position-aligned logits. ``generators`` (one per
    row) are required when temperature > 0 or remasking is random. Each step runs one forward pass
    over the rows still decoding; a row's commits and noise draws depend on its own state only.
    ``prompt_cache_fns`` = (prefill, after_prompt) for ``cfg.prompt_cache``:
    ``prefill(ids, mask, prompt_len)`` -> (logits, cache of per-layer (keys, values) [B, H, P', D]) and
    ``after_prompt(ids, mask, cache)`` -> logits of the completion positions, computed over the
    positions after the cache only (``models.adapter.prompt_cache_fns`` builds them for a model)."""
    stochastic = cfg.temperature > 0 or cfg.remasking == "random"
    if stochastic and (generators is None or len(generators) != len(prompts)):
        raise ValueError("sampling with temperature > 0 or random remasking needs one generator per row")
    if cfg.prompt_cache and prompt_cache_fns is None:
        raise ValueError("prompt_cache needs a model that can reuse a prompt's keys and values (tiny, llada, dream)")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    b, tp, length = len(prompts), prompt_ids.shape[1], cfg.gen_length
    x = torch.cat([prompt_ids, torch.full((b, length), mask_id, dtype=torch.long)], dim=1)
    attn = torch.cat([prompt_mask, torch.ones(b, length, dtype=torch.long)], dim=1)
    commit = torch.full((b, length), -1, dtype=torch.long)
    logprobs = torch.zeros(b, length)
    row_nfe = torch.zeros(b, dtype=torch.long)
    active = torch.ones(b, dtype=torch.bool)
    block_of = torch.arange(length) // cfg.block_length  # block index of every completion position
    plan = _fixed_plan(cfg) if cfg.threshold is None else None
    budget = None  # threshold with a step budget: steps allowed in each block
    if plan is None and cfg.steps is not None:
        budget = torch.tensor([n for _, _, n in _block_steps(length, cfg.block_length, cfg.steps)])
        used = torch.zeros(b, dtype=torch.long)  # steps each row has spent in its current block
        row_block = torch.zeros(b, dtype=torch.long)
    cache = None
    t = 0
    while bool(active.any()) and (plan is None or t < len(plan)):
        idx = active.nonzero().squeeze(1)
        n = len(idx)
        gens = None if generators is None else [generators[i] for i in idx.tolist()]
        if not cfg.prompt_cache:
            raw = logits_fn(x[idx], attn[idx])[:, tp:]
        elif cache is None or (cfg.prompt_cache_refresh and t % cfg.prompt_cache_refresh == 0):
            # a full pass (every row is active in the first), writing the rows' prompt keys/values
            raw, fresh = prompt_cache_fns[0](x[idx], attn[idx], tp)
            raw = raw[:, tp:]
            if cache is None:
                cache = fresh
            else:
                for (k, v), (fk, fv) in zip(cache, fresh):
                    k[idx], v[idx] = fk, fv
        else:
            raw = prompt_cache_fns[1](x[idx], attn[idx], [(k[idx], v[idx]) for k, v in cache])
        raw = raw.double().cpu()  # fp64: low-precision Gumbel noise biases sampling
        chosen, logp, conf = _propose(raw, cfg, mask_id, gens)
        y = x[idx, tp:]
        masked = y == mask_id
        if plan is None:  # threshold: the row's current block is the one of its first masked position
            current = block_of[masked.int().argmax(1)]
            eligible = masked & (block_of[None, :] == current[:, None])
            conf = conf.masked_fill(~eligible, float("-inf"))
            select = eligible & (conf > cfg.threshold)
            select[torch.arange(n), conf.argmax(1)] = True
            if budget is not None:  # the fixed schedule's count as a floor: ceil(remaining / steps left)
                used[idx] = torch.where(current == row_block[idx], used[idx], 0)
                row_block[idx] = current
                left = (budget[current] - used[idx]).clamp(min=1)
                floor = (eligible.sum(1) + left - 1) // left
                rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                select |= eligible & (rank < floor[:, None])
                used[idx] += 1
        else:
            start, end, n_commit = plan[t]
            in_block = (torch.arange(length) >= start) & (torch.arange(length) < end)
            conf = conf.masked_fill(~(masked & in_block), float("-inf"))
            select = torch.zeros_like(masked)
            if n_commit > 0:  # same count for every row: all rows share the fixed schedule
                select.scatter_(1, conf.topk(n_commit, dim=-1).indices, True)
        step = row_nfe[idx][:, None]
        y = torch.where(select, chosen, y)
        commit[idx] = torch.where(select, step, commit[idx])
        logprobs[idx] = torch.where(select, logp.float(), logprobs[idx])
        row_nfe[idx] += 1
        masked = y == mask_id
        finished = ~masked.any(1) if plan is None else torch.zeros(n, dtype=torch.bool)
        if cfg.eos_id is not None:  # early stop: EOS in a block before every remaining masked position
            far = torch.tensor(length)
            first_eos = torch.where(y == cfg.eos_id, block_of, far).min(1).values
            first_masked = torch.where(masked, block_of, far).min(1).values
            stop = masked.any(1) & (first_eos < first_masked)
            fill = masked & stop[:, None]
            y = y.masked_fill(fill, cfg.eos_id)
            commit[idx] = torch.where(fill, row_nfe[idx][:, None], commit[idx])
            logprobs[idx] = logprobs[idx].masked_fill(fill, 0.0)
            finished |= stop
        x[idx, tp:] = y
        active[idx[finished]] = False
        t += 1
    return SampleOutput(completions=x[:, tp:].clone(), commit_step=commit, logprobs=logprobs,
                        nfe=int(row_nfe.max()), row_nfe=row_nfe)

"""Masked-diffusion sampler: iterative unmasking with low-confidence or random remasking,
semi-autoregressive blocks, temperature sampling (exact inverse-CDF draws, see ``proposals``; greedy
at temperature 0), and correct handling of left-padded batches: every row draws its noise from its
own generator, so a padded batch gives the same output as each row sampled alone.

The decoding state lives on the logits' device, and each step asks the model for logits of the
positions that can be committed only (the current block), so the sampler's own work per step is
a few passes over [rows, block, V] on the device: no host copies of logits, and noise is one
uniform per position drawn from the row's CPU generator.

Cheaper-rollout options: confidence-threshold parallel decoding (Fast-dLLM: commit every position
of the current block whose confidence clears a threshold, at least one per step, so the step count
adapts per row; optionally capped by a step budget whose fixed schedule is the floor), early stop (a
row whose remaining masked positions all lie in blocks after a finished block containing EOS is
filled with EOS and leaves the batch) and approximate prompt caching. Finished rows drop out of the
forward passes; ``row_nfe`` counts each row's own forward passes."""
from __future__ import annotations

from dataclasses import dataclass, fields

import inspect

import torch

from .proposals import propose, sampling_logits  # noqa: F401  (sampling_logits: re-exported for objectives)

REMASKING = ("low_confidence", "random", "entropy", "margin")


@dataclass
class DecodingConfig:
    """How completions are decoded, whatever their length: the settings rollouts (``RolloutConfig``,
    which extends this) and the sampler (``SamplerConfig``) share, with their checks, defined once.
    Defaults follow LLaDA's evaluation protocol: blocks of 32, two tokens per step, greedy."""

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
    batch_size: int | None = None
    """Rows decoded together in one batch of forward passes (memory at real vocabularies); None = all.
    Completions do not depend on it."""

    def __post_init__(self):
        for name in ("steps", "block_length", "batch_size", "top_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or null, got {self.top_p}")
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

    def check_steps(self, gen_length: int) -> None:
        """A step budget needs at least one step per block of ``gen_length``."""
        blocks = -(-gen_length // self.block_length)
        if self.steps is not None and self.steps < blocks:
            raise ValueError(f"steps ({self.steps}) must be at least the number of blocks of gen_length / "
                             f"block_length ({blocks})")

    def decoding(self) -> dict:
        """This config's decoding fields (those of ``DecodingConfig``) as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(DecodingConfig)}


@dataclass
class SamplerConfig(DecodingConfig):
    """One generation call: the decoding settings at a completion length, with optional early stop."""

    gen_length: int = 256
    eos_id: int | None = None
    """Early stop: once every masked position of a row lies in blocks after a fully committed block
    containing this token, the rest is filled with it (log-prob 0) without further forward passes.
    None = off."""

    @classmethod
    def of(cls, decoding: DecodingConfig, gen_length: int, eos_id: int | None = None) -> "SamplerConfig":
        """The sampler for ``decoding`` (e.g. a run's rollout settings) at ``gen_length``."""
        return cls(**decoding.decoding(), gen_length=gen_length, eos_id=eos_id)

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



def logits_at(logits_fn, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: slice) -> torch.Tensor:
    """Position-aligned logits of the positions ``keep`` only: the output head runs there alone when
    ``logits_fn`` takes transformers' ``logits_to_keep`` (the native families do), else a slice."""
    try:
        takes_keep = "logits_to_keep" in inspect.signature(logits_fn).parameters
    except (TypeError, ValueError):
        takes_keep = False
    if takes_keep:
        return logits_fn(input_ids, attention_mask, logits_to_keep=keep)
    return logits_fn(input_ids, attention_mask)[:, keep]


def _uniforms(generators: list[torch.Generator], spans: list[tuple[int, int]], width: int) -> torch.Tensor:
    """[n, width] float64 uniforms: row i draws ``end - start`` from its own generator into its span
    (the positions it can commit), so a row's stream never depends on the rest of the batch."""
    out = torch.full((len(generators), width), 0.5, dtype=torch.float64)
    for i, (g, (start, end)) in enumerate(zip(generators, spans)):
        out[i, start:end] = torch.rand(end - start, generator=g, dtype=torch.float64)
    return out


def _concat(parts: list[SampleOutput]) -> SampleOutput:
    return SampleOutput(completions=torch.cat([p.completions for p in parts]),
                        commit_step=torch.cat([p.commit_step for p in parts]),
                        logprobs=torch.cat([p.logprobs for p in parts]),
                        nfe=max(p.nfe for p in parts), row_nfe=torch.cat([p.row_nfe for p in parts]))


@torch.no_grad()
def generate(logits_fn, prompts: list[list[int]], mask_id: int, pad_id: int, cfg: SamplerConfig,
             generators: list[torch.Generator] | None = None, prompt_cache_fns=None) -> SampleOutput:
    """Sample completions of ``cfg.gen_length`` tokens for token-id ``prompts`` (outputs on the CPU).

    ``logits_fn(input_ids, attention_mask[, logits_to_keep])`` returns position-aligned logits.
    ``generators`` (one per row, CPU) are required when temperature > 0 or remasking is random. Each
    step runs one forward pass over the rows still decoding; a row's commits and noise draws depend
    on its own state only. ``prompt_cache_fns`` = (prefill, after_prompt) for ``cfg.prompt_cache``:
    ``prefill(ids, mask, prompt_len)`` -> (logits, cache of per-layer (keys, values) [B, H, P', D]) and
    ``after_prompt(ids, mask, cache)`` -> logits of the completion positions, computed over the
    positions after the cache only (``models.adapter.prompt_cache_fns`` builds them for a model)."""
    stochastic = cfg.temperature > 0 or cfg.remasking == "random"
    if stochastic and (generators is None or len(generators) != len(prompts)):
        raise ValueError("sampling with temperature > 0 or random remasking needs one generator per row")
    if cfg.prompt_cache and prompt_cache_fns is None:
        raise ValueError("prompt_cache needs a model that can reuse a prompt's keys and values (tiny, llada, dream)")
    bs = cfg.batch_size
    if bs is not None and len(prompts) > bs:
        return _concat([generate(logits_fn, prompts[i:i + bs], mask_id, pad_id, cfg,
                                 None if generators is None else generators[i:i + bs], prompt_cache_fns)
                        for i in range(0, len(prompts), bs)])
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    b, tp, length, blk = len(prompts), prompt_ids.shape[1], cfg.gen_length, cfg.block_length
    x = torch.cat([prompt_ids, torch.full((b, length), mask_id, dtype=torch.long)], dim=1)
    attn = torch.cat([prompt_mask, torch.ones(b, length, dtype=torch.long)], dim=1)
    commit = torch.full((b, length), -1, dtype=torch.long)
    logprobs = torch.zeros(b, length)
    row_nfe = torch.zeros(b, dtype=torch.long)
    active = torch.ones(b, dtype=torch.bool)
    block_of = torch.arange(length) // blk  # block index of every completion position
    plan = _fixed_plan(cfg) if cfg.threshold is None else None
    budget = None  # threshold with a step budget: steps allowed in each block
    if plan is None and cfg.steps is not None:
        budget = torch.tensor([n for _, _, n in _block_steps(length, blk, cfg.steps)])
        used = torch.zeros(b, dtype=torch.long)  # steps each row has spent in its current block
        row_block = torch.zeros(b, dtype=torch.long)
    dev = torch.device("cpu")  # the state follows the logits' device after the first pass
    cache = None
    t = 0
    while plan is None or t < len(plan):
        idx = active.nonzero().squeeze(1)
        n = len(idx)
        if n == 0:
            break
        y = x[idx, tp:]
        masked = y == mask_id
        if plan is None:  # threshold: the row's current block is the one of its first masked position
            current = block_of[masked.int().argmax(1)]
            lo, hi = int(current.min()), int(current.max())
            ws, we = lo * blk, min((hi + 1) * blk, length)
            spans = [(c * blk - ws, min((c + 1) * blk, length) - ws) for c in current.tolist()]
        else:
            ws, we, n_commit = plan[t]
            spans = [(0, we - ws)] * n
        keep = slice(tp + ws, tp + we)
        if not cfg.prompt_cache:
            raw = logits_at(logits_fn, x[idx], attn[idx], keep)
        elif cache is None or (cfg.prompt_cache_refresh and t % cfg.prompt_cache_refresh == 0):
            # a full pass (every row is active in the first), writing the rows' prompt keys/values
            raw, fresh = prompt_cache_fns[0](x[idx], attn[idx], tp)
            raw = raw[:, keep]
            if cache is None:
                cache = fresh
            else:
                for (k, v), (fk, fv) in zip(cache, fresh):
                    k[idx.to(k.device)], v[idx.to(v.device)] = fk, fv
        else:
            i_c = idx.to(cache[0][0].device)
            raw = prompt_cache_fns[1](x[idx], attn[idx], [(k[i_c], v[i_c]) for k, v in cache])[:, ws:we]
        if raw.device != dev:  # first pass: move the decoding state next to the logits
            dev = raw.device
            x, attn, commit, logprobs, row_nfe, active, block_of, idx, y, masked = (
                t_.to(dev) for t_ in (x, attn, commit, logprobs, row_nfe, active, block_of, idx, y, masked))
            if plan is None:
                current = current.to(dev)
                if budget is not None:
                    budget, used, row_block = budget.to(dev), used.to(dev), row_block.to(dev)
        gens = None if generators is None else [generators[i] for i in idx.tolist()]
        yw, mw = y[:, ws:we], masked[:, ws:we]
        eligible = mw if plan is not None else mw & (block_of[None, ws:we] == current[:, None])
        u = _uniforms(gens, spans, we - ws) if cfg.temperature > 0 else None
        chosen, logp, conf = propose(raw, cfg.temperature, cfg.top_k, cfg.top_p, cfg.remasking, mask_id, u, eligible)
        del raw  # before the next forward pass allocates its logits
        if cfg.remasking == "random":
            conf = _uniforms(gens, spans, we - ws).to(dev, torch.float32)
        if plan is None:
            conf = conf.masked_fill(~eligible, float("-inf"))
            select = eligible & (conf > cfg.threshold)
            select[torch.arange(n, device=dev), conf.argmax(1)] = True
            if budget is not None:  # the fixed schedule's count as a floor: ceil(remaining / steps left)
                used[idx] = torch.where(current == row_block[idx], used[idx], 0)
                row_block[idx] = current
                left = (budget[current] - used[idx]).clamp(min=1)
                floor = (eligible.sum(1) + left - 1) // left
                rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                select |= eligible & (rank < floor[:, None])
                used[idx] += 1
        else:
            conf = conf.masked_fill(~mw, float("-inf"))
            select = torch.zeros_like(mw)
            if n_commit > 0:  # same count for every row: all rows share the fixed schedule
                select.scatter_(1, conf.topk(n_commit, dim=-1).indices, True)
        step = row_nfe[idx][:, None]
        y[:, ws:we] = torch.where(select, chosen, yw)
        commit[idx, ws:we] = torch.where(select, step, commit[idx, ws:we])
        logprobs[idx, ws:we] = torch.where(select, logp, logprobs[idx, ws:we])
        row_nfe[idx] += 1
        masked = y == mask_id
        finished = ~masked.any(1) if plan is None else torch.zeros(n, dtype=torch.bool, device=dev)
        if cfg.eos_id is not None:  # early stop: EOS in a block before every remaining masked position
            far = torch.tensor(length, device=dev)
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
    return SampleOutput(completions=x[:, tp:].cpu(), commit_step=commit.cpu(), logprobs=logprobs.cpu(),
                        nfe=int(row_nfe.max()), row_nfe=row_nfe.cpu())

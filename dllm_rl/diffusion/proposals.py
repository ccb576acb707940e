"""One denoising step's proposals, computed on the logits' device for the positions in play only:
the token each position would take, its log-prob under the sampling distribution, and the
remasking confidence.

Sampling is exact inverse-CDF sampling with one float64 uniform per position, not Gumbel-max:
float32 Gumbel noise truncates the distribution's tail (a known bias of low-precision sampling in
masked diffusion models), and a float64 copy of [rows, positions, V] logits costs gigabytes per
step at a 126k-token vocabulary. Probabilities are float32 (every token whose float32 probability
is nonzero can be drawn); the prefix sums over vocabulary chunks and within the chosen chunk are
float64, so the uniform's 53 bits resolve probabilities far below float32's epsilon."""
from __future__ import annotations

import torch

WORK_BYTES = {"cpu": 2**22, "cuda": 2**28}
"""Float32 working set per chunk of (row, position) pairs, by device: on a CPU a chunk that stays in
cache is several times faster; on a GPU large chunks keep kernel launches few. Bounds a step's memory."""
VOCAB_CHUNK = 256
"""Tokens per chunk of the two-level prefix sum."""


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of logits [..., V]."""
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


def _last_positive(cum: torch.Tensor) -> torch.Tensor:
    """Index of the last entry with positive mass in each row of non-decreasing prefix sums [R, K]."""
    return (cum < cum[:, -1:]).sum(-1)


def categorical(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Exact draws [R] from float32 probabilities ``probs`` [R, V] (normalised or not) by inverse CDF
    at ``uniforms`` [R] (float64 in [0, 1)); zero-probability tokens are never drawn. Two levels:
    float64 prefix sums of chunk masses pick a chunk, then of the probabilities inside it."""
    r, v = probs.shape
    c = min(VOCAB_CHUNK, v)
    full = v // c * c
    mass = probs[:, :full].view(r, -1, c).sum(-1)
    if full < v:
        mass = torch.cat([mass, probs[:, full:].sum(-1, keepdim=True)], dim=1)
    cum = mass.double().cumsum(-1)  # [R, K]
    target = uniforms.to(cum) * cum[:, -1]
    k = torch.searchsorted(cum, target[:, None], right=True).squeeze(1)
    k = torch.minimum(k, _last_positive(cum))  # a target rounded up to the total
    rows = torch.arange(r, device=probs.device)
    before = torch.where(k > 0, cum[rows, (k - 1).clamp(min=0)], torch.zeros_like(target))
    tok = k[:, None] * c + torch.arange(c, device=probs.device)
    inner = probs.gather(1, tok.clamp(max=v - 1)).masked_fill(tok >= v, 0.0).double().cumsum(-1)  # [R, C]
    rest = (target - before) / mass[rows, k].double() * inner[:, -1]  # on the chunk's float64 total
    j = torch.searchsorted(inner, rest[:, None], right=True).squeeze(1)
    return k * c + torch.minimum(j, _last_positive(inner))


def _propose_rows(raw: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                  remasking: str, mask_id: int, uniforms: torch.Tensor | None):
    """Token, log-prob and confidence [R] of rows of raw logits [R, V] (see :func:`propose`)."""
    x = raw.to(torch.float32, copy=True)
    x[:, mask_id] = float("-inf")  # never commit the mask token itself
    filtered = top_k is not None or (top_p is not None and top_p < 1.0)
    # LLaDA's low-confidence score is the model's own (unfiltered, untempered) probability
    raw_lse = torch.logsumexp(x, -1) if remasking == "low_confidence" and (
        filtered or temperature not in (0.0, 1.0)) else None
    if temperature > 0 and temperature != 1.0:
        x.div_(temperature)
    x = _filter(x, top_k, top_p)
    probs = torch.softmax(x, -1)  # the sampling distribution, float32
    chosen = categorical(probs, uniforms) if temperature > 0 else x.argmax(-1)
    p_chosen = probs.gather(-1, chosen[:, None]).squeeze(-1)
    if remasking == "low_confidence":
        conf = p_chosen if raw_lse is None else (raw.gather(-1, chosen[:, None]).squeeze(-1).float() - raw_lse).exp()
    elif remasking == "entropy":  # Dream's default: lowest entropy of the sampling distribution first
        conf = -torch.special.entr(probs).sum(-1)
    elif remasking == "margin":  # Dream's topk_margin: largest gap between the two most likely tokens
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    else:  # random: the caller supplies the confidences
        conf = torch.zeros_like(p_chosen)
    return chosen, p_chosen.log(), conf


def propose(raw: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, remasking: str,
            mask_id: int, uniforms: torch.Tensor | None = None, where: torch.Tensor | None = None,
            work_bytes: int | None = None):
    """Token choice (argmax at temperature 0, else an exact draw at ``uniforms``), its float32 log-prob
    under the sampling distribution, and the remasking confidence, each [n, W], from logits [n, W, V]
    of any dtype; only at the positions ``where`` [n, W] is True (those still masked; elsewhere token
    0, log-prob 0, confidence -inf). Positions go through in chunks of ``work_bytes`` of float32."""
    n, w, v = raw.shape
    dev = raw.device
    flat = raw.reshape(n * w, v)
    u = None if uniforms is None else uniforms.reshape(n * w).to(dev)
    todo = torch.arange(n * w, device=dev) if where is None else where.reshape(n * w).nonzero().squeeze(1)
    chosen = torch.zeros(n * w, dtype=torch.long, device=dev)
    logp = torch.zeros(n * w, device=dev)
    conf = torch.full((n * w,), float("-inf"), device=dev)
    step = max(1, (work_bytes or WORK_BYTES.get(dev.type, WORK_BYTES["cuda"])) // (4 * v))
    for i in range(0, len(todo), step):
        at = todo[i:i + step]
        c, lp, cf = _propose_rows(flat.index_select(0, at), temperature, top_k, top_p, remasking, mask_id,
                                  None if u is None else u.index_select(0, at))
        chosen[at], logp[at], conf[at] = c, lp, cf
    return chosen.view(n, w), logp.view(n, w), conf.view(n, w)

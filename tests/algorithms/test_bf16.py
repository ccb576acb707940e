"""bf16 done right: with bf16 weights (bf16 logits) the ELBO terms, the ratios and the KL are computed
in float32, and the iteration-0 ratio is exactly 1 (theta_old = theta, the same masks, the same
arithmetic), also when theta_old's proxy comes from ``prepare`` (no grad) rather than the current
pass detached. AGRPO's ratio is against the log-probs the bf16 sampler recorded: 1 up to fp32
rounding of two log-softmax implementations (a bf16 log-softmax would be off by ~1e-2)."""
import pytest
import torch

import dllm_rl.rl.surrogate as surrogate
from dllm_rl.algorithms.agrpo import AGRPO, AGRPOConfig
from dllm_rl.algorithms.diffu_grpo import DiffuGRPO, DiffuGRPOConfig
from dllm_rl.algorithms.espo import ESPO, ESPOConfig
from dllm_rl.algorithms.spg import SPG, SPGConfig
from dllm_rl.algorithms.token_elbo import TokenELBO, TokenELBOConfig
from dllm_rl.algorithms.wd1 import WD1
from dllm_rl.config import RolloutConfig
from dllm_rl.diffusion.likelihood import elbo_terms
from dllm_rl.diffusion.masking import sample_masks
from dllm_rl.diffusion.sampler import SamplerConfig, generate, left_pad
from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.models.lora import apply_lora
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask

L, BLOCK, STEPS, TEMPERATURE = 8, 4, 4, 0.7
PROMPT_LENGTHS = (5, 3, 5, 4)  # left padding in rows 1 and 3
ADV = [1.0, -1.0, 0.5, -0.5]
KEY = (0, "t", 0, 0)


def bf16_tiny(lora: bool = False):
    """The tiny model (small config, keyed init) cast to bf16; with ``lora``, under LoRA adapters
    (q_proj, v_proj; peft keeps them fp32) with nonzero B, dropout 0."""
    config = TinyDLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = TinyDLM(config)
    model.reset_parameters(torch.Generator().manual_seed(0))
    model = model.to(torch.bfloat16)
    if lora:
        model = apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.train()


def adapter_of(model) -> ModelAdapter:
    c = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    return ModelAdapter(model=model, tokenizer=None, mask_id=c.mask_token_id, eos_id=c.eos_token_id,
                        pad_id=c.pad_token_id, stop_ids=(c.eos_token_id,))


@pytest.fixture(scope="module")
def full():
    """(adapter, rollout batch): a full-parameter bf16 tiny model and completions it sampled itself
    (temperature 0.7, random remasking: AGRPO's commit steps and recorded log-probs)."""
    adapter = adapter_of(bf16_tiny())
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(5, 90, (k,), generator=g).tolist() for k in PROMPT_LENGTHS]
    cfg = SamplerConfig(gen_length=L, steps=STEPS, block_length=BLOCK, temperature=TEMPERATURE, remasking="random")
    adapter.model.eval()
    out = generate(adapter.logits, prompts, adapter.mask_id, adapter.pad_id, cfg,
                   [torch.Generator().manual_seed(i) for i in range(len(prompts))])
    adapter.model.train()
    prompt_ids, prompt_mask = left_pad(prompts, adapter.pad_id)
    valid = valid_token_mask(out.completions, adapter.stop_ids)
    n = len(prompts)
    adv = torch.tensor(ADV)
    batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=out.completions,
                         valid_mask=valid, rewards=adv.clone(), advantages=adv, rows=torch.arange(n),
                         groups=torch.arange(n) // 2, commit_step=out.commit_step, sample_logprobs=out.logprobs,
                         step=1, num_rows=n, num_groups=n // 2, total_valid_tokens=int(valid.sum()))
    return adapter, batch


@pytest.fixture(scope="module")
def lora(full):
    """The same rollout batch with a bf16 LoRA model (the reference: adapters off)."""
    return adapter_of(bf16_tiny(lora=True)), full[1]


def test_the_model_really_runs_in_bf16(full, lora):
    for adapter, batch in (full, lora):
        seqs = batch.sequences()
        with torch.no_grad():
            logits = adapter.logits(torch.cat([seqs.prompt_ids, seqs.completion_ids], 1))
        assert logits.dtype == torch.bfloat16


def test_elbo_terms_are_fp32_and_match_a_float64_log_softmax_of_the_same_logits(full):
    """Recompute the ELBO terms by hand from the bf16 logits the estimator was given (same keyed masks),
    with a float64 log-softmax: agreement to fp32 rounding (a bf16 log-softmax is off by ~1e-2)."""
    adapter, batch = full
    seqs = batch.sequences()
    seen = []

    def recording(ids, attn, logits_to_keep=0):
        out = adapter.logits(ids, attn, logits_to_keep=logits_to_keep)
        seen.append((ids.clone(), out.detach().clone()))
        return out

    terms = elbo_terms(recording, seqs, adapter.mask_id, key=KEY, num_samples=2)
    assert terms.dtype == torch.float32 and terms.shape == (4, L)
    assert len(seen) == 2 and all(logits.dtype == torch.bfloat16 for _, logits in seen)
    want = torch.zeros(4, L, dtype=torch.float64)
    tp = seqs.prompt_ids.shape[1]
    for m, (ids, logits) in enumerate(seen):
        masked, weight = sample_masks((*KEY, m), seqs.rows, seqs.num_rows, L)
        p = masked.shape[1]
        flat = masked.transpose(0, 1).reshape(p * 4, L)  # copy-major, as the estimator stacks them
        expected_in = torch.where(flat, torch.full_like(seqs.completion_ids.repeat(p, 1), adapter.mask_id),
                                  seqs.completion_ids.repeat(p, 1))
        assert torch.equal(ids[:, tp:], expected_in) and logits.shape[1] == L
        logp = torch.log_softmax(logits.double(), -1).gather(-1, seqs.completion_ids.repeat(p, 1)[..., None]).squeeze(-1)
        logp = logp.view(p, 4, L).transpose(0, 1)
        want += (masked * weight.double()[..., None] * logp).sum(1) / p
    want /= 2
    assert torch.allclose(terms.double(), want, rtol=1e-5, atol=1e-5)
    assert float(want.abs().max()) > 1.0  # not vacuous
    # and a second call gives bit-identical terms (no hidden nondeterminism in the bf16 path)
    assert torch.equal(elbo_terms(adapter.logits, seqs, adapter.mask_id, key=KEY, num_samples=2), terms)


RATIO_ALGORITHMS = {
    "espo": lambda **kw: ESPO(ESPOConfig(mu=2, beta=0.01, **kw), seed=0),
    "espo-token": lambda **kw: ESPO(ESPOConfig(mu=2, beta=0.01, action="token", **kw), seed=0),
    "diffu_grpo": lambda **kw: DiffuGRPO(DiffuGRPOConfig(mu=2, **kw), seed=0),
    "token_elbo": lambda **kw: TokenELBO(TokenELBOConfig(mu=2, **kw), seed=0),
}


def run_loss(adapter, batch, alg, iteration):
    cache = alg.prepare(adapter, batch, batch.num_rows)
    loss, metrics = alg.loss(adapter, batch, cache, iteration)
    return cache, loss, metrics


@pytest.mark.parametrize("masks_per", ["iteration", "rollout"])
@pytest.mark.parametrize("name", sorted(RATIO_ALGORITHMS))
@pytest.mark.parametrize("which", ["full", "lora"])
def test_iteration_zero_ratio_is_exactly_one(full, lora, which, name, masks_per):
    """masks_per=rollout takes iteration 0's theta_old from prepare's no-grad pass: still exactly 1.
    So does iteration 1 with no update in between (theta = theta_old)."""
    adapter, batch = full if which == "full" else lora
    alg = RATIO_ALGORITHMS[name](masks_per=masks_per)
    for iteration in (0, 1):
        cache, loss, metrics = run_loss(adapter, batch, alg, iteration)
        assert all(v.dtype == torch.float32 for v in cache.values())
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert metrics["log_ratio_abs_max"] == 0.0, (iteration, metrics)
        assert metrics["ratio_mean"] == 1.0 and metrics["ratio_max"] == 1.0
        assert metrics["clip_frac"] == 0.0


@pytest.mark.parametrize("which", ["full", "lora"])
def test_espo_loss_is_fp32_with_finite_gradients(full, lora, which):
    adapter, batch = full if which == "full" else lora
    model = adapter.model
    model.zero_grad(set_to_none=True)
    _, loss, metrics = run_loss(adapter, batch, ESPO(ESPOConfig(mu=2, beta=0.01), seed=0), 0)
    assert loss.dtype == torch.float32
    assert metrics["ratio_mean"] == 1.0 and metrics["log_ratio_abs_max"] == 0.0
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if which == "lora":
        assert trainable and all("lora_" in n for n, _ in trainable)
    else:
        assert any(p.dtype == torch.bfloat16 for _, p in trainable)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for _, p in trainable)
    assert any(bool(p.grad.abs().sum() > 0) for _, p in trainable)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(RATIO_ALGORITHMS))
def test_kl_is_estimated_in_fp32(lora, name, monkeypatch):
    """Every log-ratio the KL estimator sees (policy vs the LoRA base, bf16 logits) is fp32, and so is
    its estimate; with nonzero adapters the KL is really computed (positive)."""
    adapter, batch = lora
    dtypes = []
    estimate = surrogate.kl_estimate

    def recording(log_ratio, kind="k2"):
        out = estimate(log_ratio, kind)
        dtypes.append((log_ratio.dtype, out.dtype))
        return out

    monkeypatch.setattr(surrogate, "kl_estimate", recording)
    alg = RATIO_ALGORITHMS[name]()
    assert alg.config.beta > 0
    for iteration in (0, 1):
        _, loss, metrics = run_loss(adapter, batch, alg, iteration)
        assert loss.dtype == torch.float32
        assert metrics["kl"] > 0
    assert dtypes and all(d == (torch.float32, torch.float32) for d in dtypes)


def test_agrpo_ratio_is_one_against_the_bf16_samplers_log_probs(full):
    """Iteration 0 of AGRPO compares the re-evaluated step log-probs with those the (bf16) sampler
    recorded: equal up to fp32 rounding, far below what a bf16 log-softmax would leave."""
    adapter, batch = full
    alg = AGRPO(AGRPOConfig(num_steps=STEPS), seed=0)
    alg.rollout = RolloutConfig(temperature=TEMPERATURE, remasking="random", steps=STEPS, block_length=BLOCK)
    assert int(batch.commit_step.max()) + 1 == STEPS  # every step revisited, every token counted
    loss, metrics = alg.loss(adapter, batch, {}, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert metrics["log_ratio_abs_max"] < 1e-5, metrics
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["step_logp"] < -0.5  # real choices: the check is not vacuous
    assert batch.sample_logprobs.dtype == torch.float32


def test_ratio_free_objectives_are_fp32_in_bf16(full):
    """wd1 and SPG have no ratio: their losses are still fp32 and finite with bf16 logits."""
    adapter, batch = full
    for alg in (WD1(seed=0), SPG(SPGConfig(block_length=BLOCK), seed=0)):
        cache = alg.prepare(adapter, batch, batch.num_rows)
        loss, _ = alg.loss(adapter, batch, cache, 0)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)

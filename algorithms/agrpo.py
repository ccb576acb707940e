"""AGRPO: Amortized GRPO (Zhan, 2025), a Monte-Carlo estimate of the per-denoising-step policy gradient.

Generation is a Markov chain whose step s commits the tokens C_s given the state x_s; with a random
unmasking order the position choice does not depend on theta, so the policy's factors are the token
choices, whose log-probs under the exact sampling distribution the sampler recorded (the old policy).
Each loss call revisits ``num_steps`` stratified steps per completion, rebuilds their states from the
recorded commit steps and applies the token-level clipped ratio to the tokens committed there:

    rho_ik = exp(log pi_theta(y_ik | x_s) - log pi_old(y_ik | x_s)),   k in C_s
    loss   = (1/B) sum_i (1/L) sum_j w_j sum_{k in C_{s_j}} [-min(rho_ik A_i, clip(rho_ik) A_i) + beta KL_ik]

with w_j the stratum sizes, so the sum over sampled steps is unbiased for the sum over all steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_rl.diffusion.likelihood import denoising_step_logprobs
from dllm_rl.diffusion.masking import stratified_steps
from dllm_rl.errors import UsageError
from dllm_rl.rl.algorithm import Algorithm, AlgorithmConfig
from dllm_rl.rl.kl import KL_ESTIMATORS
from dllm_rl.rl.surrogate import token_objective


@dataclass
class AGRPOConfig(AlgorithmConfig):
    """On-policy (mu 1), group-mean advantages, eps 0.2, no KL by default; 4 revisited steps per
    completion (the forward budget of ESPO's 2 coupled ELBO draws). Needs random remasking during
    rollouts (registry preset), temperature > 0 and no early stop (``AGRPO.check_rollout``)."""

    mu: int = 1
    baseline: str = "group_mean"
    scale_adv_by_std: bool = False
    num_steps: int = 4
    """Denoising steps revisited per completion and loss call (stratified over the rollout's steps)."""
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    kl: str = "k3"

    def __post_init__(self):
        super().__post_init__()
        if self.num_steps < 1:
            raise ValueError("num_steps must be at least 1")
        if self.kl not in KL_ESTIMATORS:
            raise ValueError(f"kl must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl!r}")
        if self.eps_low < 0 or self.eps_high < 0 or self.beta < 0:
            raise ValueError("eps_low, eps_high and beta must be non-negative")


class AGRPO(Algorithm):
    progress_metrics = ("kl", "clip_frac")
    """Step metrics shown on the live progress line."""

    Config = AGRPOConfig
    config: AGRPOConfig

    def check_rollout(self, rollout) -> None:
        """Refuse (UsageError, before any work) rollouts whose trajectory is not the sampled, theta-free
        chain this objective re-evaluates: early stop's unsampled EOS fill, positions ordered by the
        model's confidence, or greedy sampling (no density)."""
        if rollout.early_stop:
            raise UsageError("agrpo cannot use rollout.early_stop=true: it re-evaluates every denoising step, and early "
                             "stop fills the tokens after EOS without sampling them; use rollout.early_stop=false")
        if rollout.remasking != "random":
            raise UsageError(f"agrpo needs rollout.remasking=random (positions drawn independently of the policy, "
                             f"its preset), got rollout.remasking={rollout.remasking}: that order depends on the model")
        if rollout.temperature <= 0:
            raise UsageError(f"agrpo needs rollout.temperature > 0 (greedy sampling has no per-step density), "
                             f"got rollout.temperature={rollout.temperature}")

    def _steps(self, batch, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Revisited steps and their weights [B, n], keyed by (seed, rollout step, iteration, row)."""
        total = int(batch.commit_step.max()) + 1  # every row shares the sampler's step schedule
        return stratified_steps((self.seed, "agrpo", batch.step, iteration), batch.rows.cpu(), total, self.config.num_steps)

    def _logprobs(self, logits_fn, mask_id: int, batch, steps: torch.Tensor) -> torch.Tensor:
        r = self.rollout
        return denoising_step_logprobs(logits_fn, batch.sequences(), batch.commit_step, steps.to(batch.commit_step.device),
                                       mask_id, r.temperature, getattr(r, "top_k", None), getattr(r, "top_p", None))

    def prepare(self, adapter, batch, micro_batch_size):
        """Reference log-probs at every iteration's revisited states (only when the KL term is on)."""
        if self.config.beta <= 0:
            return {}
        mu, n = self.config.mu, min(self.config.num_steps, int(batch.commit_step.max()) + 1)
        ref = torch.zeros(batch.completion_ids.shape[0], mu, n, batch.gen_length)
        with torch.no_grad():
            for idx in batch.micro_batches(micro_batch_size):
                mb = batch.select(idx)
                for it in range(mu):
                    ref[idx, it] = self._logprobs(adapter.reference_logits, adapter.mask_id, mb, self._steps(mb, it)[0]).cpu()
        return {"ref_logp": ref}

    def loss(self, adapter, batch, cache, iteration):
        c = self.config
        steps, weights = self._steps(batch, iteration)
        logp = self._logprobs(adapter.logits, adapter.mask_id, batch, steps)  # [B, n, L]
        dev = logp.device
        steps, weights = steps.to(dev), weights.to(dev)
        acted = batch.commit_step.to(dev)[:, None, :] == steps[..., None]  # tokens committed at the revisited step
        weight = acted.float() * weights[..., None] / batch.gen_length  # [B, n, L]
        old = batch.sample_logprobs.to(dev)[:, None, :].expand_as(logp)
        ref = cache["ref_logp"][:, iteration].to(dev) if c.beta > 0 else None
        b, n, length = logp.shape
        loss, metrics = token_objective(logp.reshape(b, n * length), old.reshape(b, n * length),
                                        None if ref is None else ref.reshape(b, n * length), batch.advantages.to(dev),
                                        weight.reshape(b, n * length), batch.num_rows,
                                        eps_low=c.eps_low, eps_high=c.eps_high, beta=c.beta, kl=c.kl)
        return loss, {"step_logp": float((logp.detach() * acted).sum() / acted.sum().clamp(min=1)), **metrics}

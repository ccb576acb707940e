"""A minimal third-party algorithm: REINFORCE on the sequence ELBO, no ratio, no KL."""
from dataclasses import dataclass

from dllm_rl.diffusion.likelihood import elbo_terms
from dllm_rl.rl.algorithm import Algorithm, AlgorithmConfig


@dataclass
class ELBOReinforceConfig(AlgorithmConfig):
    num_mc: int = 1


class ELBOReinforce(Algorithm):
    """loss = -mean_i A_i * ELBO(y_i) / L."""

    description = "REINFORCE on the sequence ELBO, no ratio, no KL (example plugin)"
    Config = ELBOReinforceConfig

    def loss(self, adapter, batch, cache, iteration):
        key = (self.seed, "elbo-reinforce", batch.step, iteration)
        elbo = elbo_terms(adapter.logits, batch.sequences(), adapter.mask_id, key,
                          num_samples=self.config.num_mc).sum(-1)
        loss = -(batch.advantages.to(elbo.device) * elbo / batch.gen_length).sum() / batch.num_rows
        return loss, {"elbo": float(elbo.detach().mean())}

"""Dropout off in the ratio terms: with LoRA dropout on, theta = theta_old gives a log-ratio that is
dropout noise; ``disable_dropout`` (applied by the Trainer unless ``model.disable_dropout`` is false)
sets every dropout probability to 0, so train-mode forward passes are functions of the weights and
ESPO's ratio at theta = theta_old is exactly 1 and its KL to the LoRA base with B = 0 exactly 0."""
import dataclasses
from types import SimpleNamespace

import torch
from torch import nn

from dllm_rl.algorithms.espo import ESPO, ESPOConfig
from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.models.adapter import ModelAdapter
from dllm_rl.models.lora import apply_lora
from dllm_rl.models.tiny import TinyDLM, TinyDLMConfig
from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask
from dllm_rl.trainer import Trainer, disable_dropout

N, TP, L = 4, 5, 6
MICRO = 2  # prepare and loss on the same micro-batches, as the trainer runs them
ADV = [1.0, -1.0, 0.5, -0.5]
LORA_DROPOUT = 0.05


def lora_tiny(perturb_b: bool = True, dropout: float = LORA_DROPOUT) -> nn.Module:
    """A small tiny model under LoRA (q_proj, v_proj) with dropout ``dropout``, in train mode; with
    ``perturb_b`` the B matrices are nonzero (a trained adapter), else as initialised (zero)."""
    config = TinyDLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = TinyDLM(config)
    model.reset_parameters(torch.Generator().manual_seed(0))
    peft_model = apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, dropout=dropout)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or (perturb_b and "lora_B" in name):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return peft_model.train()


def adapter_of(model) -> ModelAdapter:
    c = model.get_base_model().config
    return ModelAdapter(model=model, tokenizer=None, mask_id=c.mask_token_id, eos_id=c.eos_token_id,
                        pad_id=c.pad_token_id, stop_ids=(c.eos_token_id,))


def rollout_batch(config) -> RolloutBatch:
    """N rows (two groups of two), a left-padded prompt, EOS padding, nonzero advantages."""
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(5, 90, (N, TP), generator=g)
    prompt_mask = torch.ones_like(prompt)
    prompt[0, :2], prompt_mask[0, :2] = config.pad_token_id, 0
    completion = torch.randint(5, 90, (N, L), generator=g)
    completion[:, -2:] = config.eos_token_id
    valid = valid_token_mask(completion, (config.eos_token_id,))
    adv = torch.tensor(ADV)
    return RolloutBatch(prompt_ids=prompt, prompt_mask=prompt_mask, completion_ids=completion, valid_mask=valid,
                        rewards=adv.clone(), advantages=adv, rows=torch.arange(N), groups=torch.arange(N) // 2,
                        commit_step=torch.zeros(N, L, dtype=torch.long), sample_logprobs=torch.zeros(N, L),
                        step=3, num_rows=N, num_groups=N // 2, total_valid_tokens=int(valid.sum()))


def espo_metrics(model, iteration: int = 1, beta: float = 0.01) -> list[dict[str, float]]:
    """ESPO's metrics of every micro-batch at ``iteration`` with no update since ``prepare``
    (theta = theta_old), the model in train mode."""
    adapter = adapter_of(model)
    batch = rollout_batch(model.get_base_model().config)
    alg = ESPO(ESPOConfig(mu=2, beta=beta), seed=0)
    cache = alg.prepare(adapter, batch, MICRO)
    out = []
    for idx in batch.micro_batches(MICRO):
        loss, metrics = alg.loss(adapter, batch.select(idx), {k: v[idx] for k, v in cache.items()}, iteration)
        assert torch.isfinite(loss)
        out.append(metrics)
    return out


def dropouts(model) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def test_disable_dropout_zeroes_every_dropout_of_a_peft_model():
    model = lora_tiny()
    extra = nn.ModuleDict({"d": nn.Dropout(0.3), "d1": nn.Dropout1d(0.2), "d2": nn.Dropout2d(0.1),
                           "alpha": nn.AlphaDropout(0.2), "feature": nn.FeatureAlphaDropout(0.2)})
    model.get_base_model().extra = extra  # other dropout kinds anywhere in the tree
    lora = [m for name, m in model.named_modules() if "lora_dropout" in name and isinstance(m, nn.Dropout)]
    assert len(lora) == 4 and all(m.p == LORA_DROPOUT for m in lora)  # q and v of both layers
    assert len(dropouts(model)) == 4 + len(extra)
    disable_dropout(model)
    assert all(m.p == 0.0 for m in dropouts(model))
    assert model.training  # train mode stays (gradient checkpointing needs it); only p changes
    # train-mode forward passes are now deterministic functions of the weights
    ids = torch.randint(5, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b)


def test_dropout_on_makes_train_mode_forward_passes_noisy():
    """The control for the test above: with LoRA dropout on, two train-mode passes differ."""
    model = lora_tiny()
    ids = torch.randint(5, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.equal(a, b)


def test_theta_equal_to_theta_old_gives_a_ratio_of_exactly_one():
    model = lora_tiny()
    disable_dropout(model)
    for metrics in espo_metrics(model, iteration=1):
        assert metrics["log_ratio_abs_max"] == 0.0
        assert metrics["ratio_mean"] == 1.0 and metrics["ratio_max"] == 1.0
        assert metrics["clip_frac"] == 0.0


def test_with_dropout_on_the_log_ratio_is_dropout_noise():
    """The check above can fail: the same weights with LoRA dropout 0.05 give a nonzero log-ratio."""
    model = lora_tiny()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        metrics = espo_metrics(model, iteration=1)
    assert max(m["log_ratio_abs_max"] for m in metrics) > 1e-5
    assert any(m["ratio_mean"] != 1.0 for m in metrics)


def test_kl_to_the_lora_base_is_exactly_zero_while_b_is_zero():
    """The reference is the base with adapters off; B = 0 (fresh LoRA) makes the policy equal to it."""
    model = lora_tiny(perturb_b=False)
    disable_dropout(model)
    for iteration in (0, 1):
        for metrics in espo_metrics(model, iteration=iteration, beta=0.01):
            assert metrics["kl"] == 0.0
            assert metrics["log_ratio_abs_max"] == 0.0 and metrics["ratio_mean"] == 1.0
    # the control: trained (nonzero) adapters move the policy away from the reference
    trained = lora_tiny(perturb_b=True)
    disable_dropout(trained)
    assert all(m["kl"] > 0 for m in espo_metrics(trained, iteration=1, beta=0.01))


def fake_task(run: RunConfig):
    """What the Trainer's constructor reads of a task."""
    return SimpleNamespace(examples=lambda split: [{"id": "0"}], splits=("train", "test", run.eval.val_split),
                           protocol=lambda style: SimpleNamespace(primary_metric="accuracy"))


def test_the_trainer_disables_dropout_by_default_and_only_then():
    assert ModelConfig().disable_dropout is True
    assert RunConfig().model.disable_dropout is True
    run = RunConfig()
    for flag, want in ((None, 0.0), (True, 0.0), (False, LORA_DROPOUT)):
        r = run if flag is None else dataclasses.replace(run, model=dataclasses.replace(run.model, disable_dropout=flag))
        model = lora_tiny()
        adapter = adapter_of(model)
        Trainer(r, adapter, fake_task(r), ESPO(ESPOConfig(mu=2)), gen_length=L)
        ps = [m.p for m in dropouts(model)]
        assert len(ps) == 4 and all(p == want for p in ps), (flag, ps)

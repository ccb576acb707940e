"""Chunked target log-probs against autograd through a full fp32 log-softmax (values and gradients,
temperature, excluded column, -inf entries, odd chunkings, non-contiguous input), and its memory:
at a real vocabulary it never holds an fp32 copy of all the logits, while the plain reference does."""
import pytest
import torch

from dllm_rl.diffusion.logprobs import target_logprobs

V = 37


def reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
              exclude: int | None = None) -> torch.Tensor:
    x = logits.float() / temperature
    if exclude is not None:
        x = x.index_fill(-1, torch.tensor([exclude]), float("-inf"))
    return torch.log_softmax(x, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def make(shape: tuple[int, ...], dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, V, generator=g) * 3).to(dtype)
    return logits, torch.randint(V, shape, generator=g)


def grads(fn, logits: torch.Tensor, targets: torch.Tensor, upstream: torch.Tensor, **kw):
    leaf = logits.detach().requires_grad_()
    out = fn(leaf, targets, **kw)
    return out.detach(), torch.autograd.grad(out, leaf, upstream)[0]


def upstream_for(targets: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A random upstream gradient with some rows exactly zero."""
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(targets.shape, generator=g)
    return up * (torch.rand(targets.shape, generator=g) > 0.3)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 14, 100])  # 14 rows: dividing, not, equal, larger
@pytest.mark.parametrize("temperature,exclude", [(1.0, None), (0.7, None), (1.3, 5)])
def test_values_and_grads_fp32(chunk_size, temperature, exclude):
    logits, targets = make((2, 7))
    up = upstream_for(targets)
    kw = dict(temperature=temperature, exclude=exclude)
    out, grad = grads(target_logprobs, logits, targets, up, chunk_size=chunk_size, **kw)
    ref_out, ref_grad = grads(reference, logits, targets, up, **kw)
    assert out.dtype == torch.float32 and out.shape == (2, 7)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    assert (grad[up == 0] == 0).all()


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bf16_values_and_grads(chunk_size):
    logits, targets = make((6, 10), torch.bfloat16)
    up = upstream_for(targets)
    out, grad = grads(target_logprobs, logits, targets, up, temperature=0.8, chunk_size=chunk_size)
    ref_out, ref_grad = grads(reference, logits.float(), targets, up, temperature=0.8)
    assert out.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)  # same bf16 inputs, fp32 math
    ref_grad = ref_grad.bfloat16()  # fp32 math then one rounding: equal but for rare 1-ulp ties
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=8e-3, atol=1e-7)
    assert (grad != ref_grad).float().mean() < 0.01


def test_non_contiguous_slice():
    full, _ = make((3, 9))
    targets = make((3, 4), seed=2)[1]
    up = upstream_for(targets)
    sliced = lambda x, t, **kw: target_logprobs(x[:, 5:], t, chunk_size=5, **kw)  # noqa: E731
    ref = lambda x, t, **kw: reference(x[:, 5:], t, **kw)  # noqa: E731
    out, grad = grads(sliced, full, targets, up, exclude=2)
    ref_out, ref_grad = grads(ref, full, targets, up, exclude=2)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    assert (grad[:, :5] == 0).all()


def test_exclude_column_and_excluded_target():
    logits, targets = make((6,))
    targets[2] = 4
    up = torch.ones(6)
    out, grad = grads(target_logprobs, logits, targets, up, exclude=4, chunk_size=4)
    ref_out, ref_grad = grads(reference, logits, targets, up, exclude=4)
    assert out[2] == float("-inf") and torch.isfinite(out[torch.arange(6) != 2]).all()
    assert (grad[:, 4] == 0).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


def test_neg_inf_logits():
    logits, targets = make((5,))
    logits[:, ::3] = float("-inf")  # filtered tokens, one of them a target
    targets[1] = 3
    up = upstream_for(targets)
    out, grad = grads(target_logprobs, logits, targets, up, temperature=0.5, chunk_size=2)
    ref_out, ref_grad = grads(reference, logits, targets, up, temperature=0.5)
    assert out[1] == float("-inf")
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    assert not grad.isnan().any()


def test_no_grad_path_matches_grad_path():
    logits, targets = make((4, 3), torch.bfloat16)
    leaf = logits.clone().requires_grad_()
    with_grad = target_logprobs(leaf, targets, temperature=0.9, exclude=1, chunk_size=5)
    assert with_grad.requires_grad
    with torch.no_grad():
        no_grad = target_logprobs(leaf, targets, temperature=0.9, exclude=1, chunk_size=5)
    plain = target_logprobs(logits, targets, temperature=0.9, exclude=1, chunk_size=5)
    assert not no_grad.requires_grad and not plain.requires_grad
    assert torch.equal(with_grad.detach(), no_grad) and torch.equal(no_grad, plain)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    logits, targets = make((2,))
    with pytest.raises(ValueError):
        target_logprobs(logits, targets, temperature=temperature)


def test_saves_only_the_input_logits():
    logits, targets = make((4, 6), torch.bfloat16)
    leaf = logits.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        target_logprobs(leaf, targets, chunk_size=5)
    big = [t for t in saved if t.numel() >= leaf.numel()]
    assert len(big) == 1 and big[0].data_ptr() == leaf.data_ptr() and big[0].dtype == torch.bfloat16


def test_replay_measures_known_allocations(memory):
    def known():
        a, b = torch.empty(1000, 1000), torch.empty(500, 1000)  # 4 MB + 2 MB
        del a
        c = torch.empty(250, 1000)
        return b, c  # 2 MB + 1 MB kept

    _, peak, net = memory.profiled(known)
    assert (peak, net) == (6_000_000, 3_000_000)


def peak_forward_backward(memory, fn, logits: torch.Tensor, targets: torch.Tensor, up: torch.Tensor) -> int:
    """Peak bytes allocated by forward then backward (the forward's net, kept in the graph, counts)."""
    out, fwd_peak, fwd_net = memory.profiled(lambda: fn(logits, targets))
    _, bwd_peak, _ = memory.profiled(lambda: torch.autograd.grad(out, logits, up))
    return max(fwd_peak, fwd_net + bwd_peak)


def test_memory_at_real_vocabulary(memory):
    vocab, rows = 126464, 512  # default chunk: 2**24 // vocab = 132 rows, so 4 chunks
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=g, dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(vocab, (rows,), generator=g)
    up = torch.randn(rows, generator=g)
    chunk_fp32 = (2**24 // vocab) * vocab * 4
    bound = logits.numel() * 2 + 1.5 * chunk_fp32  # the bf16 gradient plus one fp32 chunk (and slack)
    new = peak_forward_backward(memory, target_logprobs, logits, targets, up)
    ref = peak_forward_backward(memory, reference, logits, targets, up)
    mib = 2**20
    print(f"peak extra memory: chunked {new / mib:.1f} MiB, reference {ref / mib:.1f} MiB, "
          f"bound {bound / mib:.1f} MiB")
    assert logits.numel() * 2 <= new < bound < ref

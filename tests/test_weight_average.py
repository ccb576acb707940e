"""The weight average: the EMA recursion by hand, exact restore of the live weights, strict loading."""
import pytest
import torch

from dllm_rl.weight_average import WeightAverage


def _params():
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([[0.5]]))
    return [("a", a), ("b", b)]


def test_average_follows_the_recursion_from_the_starting_weights():
    named = _params()
    ema = WeightAverage(named, decay=0.9)
    a, b = named[0][1], named[1][1]
    with torch.no_grad():
        a.copy_(torch.tensor([3.0, 0.0])); b.fill_(1.5)
    ema.update()
    with torch.no_grad():
        a.copy_(torch.tensor([-1.0, 4.0])); b.fill_(-0.5)
    ema.update()
    # 0.9 * (0.9 * w0 + 0.1 * w1) + 0.1 * w2
    assert torch.allclose(ema.shadow[0], torch.tensor([0.81 * 1 + 0.09 * 3 - 0.1, 0.81 * -2 + 0.0 + 0.4]))
    assert torch.allclose(ema.shadow[1], torch.tensor([[0.81 * 0.5 + 0.09 * 1.5 - 0.05]]))


def test_swapped_in_restores_the_live_weights_exactly_even_after_an_error():
    named = _params()
    ema = WeightAverage(named, decay=0.5)
    with torch.no_grad():
        named[0][1].copy_(torch.tensor([0.1, 0.2]))
    ema.update()
    live = [p.detach().clone() for _, p in named]
    with pytest.raises(RuntimeError):
        with ema.swapped_in():
            assert torch.equal(named[0][1].detach(), ema.shadow[0])
            raise RuntimeError("evaluation failed")
    assert all(torch.equal(p.detach(), w) for (_, p), w in zip(named, live))


def test_bf16_weights_keep_a_float32_average():
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ema = WeightAverage([("w", w)], decay=0.999)
    with torch.no_grad():
        w.fill_(1.5)
    ema.update()  # a move of 0.0005: below bf16's resolution at 1.0 (0.0078)
    assert ema.shadow[0].dtype == torch.float32 and float(ema.shadow[0][0]) == pytest.approx(1.0005)


def test_save_load_round_trip_and_strict_errors(tmp_path):
    named = _params()
    ema = WeightAverage(named, decay=0.9)
    with torch.no_grad():
        named[0][1].add_(1.0)
    ema.update()
    ema.save(tmp_path)
    other = WeightAverage(_params(), decay=0.9)
    other.load(tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(ema.shadow, other.shadow))
    with pytest.raises(ValueError, match="does not fit the model"):
        WeightAverage([("c", torch.nn.Parameter(torch.zeros(2)))], 0.9).load(tmp_path)
    with pytest.raises(ValueError, match="has shape"):
        WeightAverage([("a", torch.nn.Parameter(torch.zeros(3))), ("b", torch.nn.Parameter(torch.zeros(1, 1)))], 0.9).load(tmp_path)
    with pytest.raises(ValueError, match="without optim.ema_decay"):
        other.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightAverage(_params(), decay=1.0)

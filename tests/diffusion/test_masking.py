"""Keyed mask sampling: coupled masks partition the completion with the right ELBO weights, the
stratified mask counts cover the strata while staying marginally uniform, and masks depend only on
(key, row), never on how the batch is split or on the global RNG."""
import itertools

import pytest
import torch

from dllm_rl.diffusion.masking import key_seed, keyed_generator, mask_counts, prompt_masks, sample_masks




def _chi2(counts: torch.Tensor) -> float:
    expected = counts.sum().double() / counts.numel()
    return float(((counts.double() - expected) ** 2 / expected).sum())


# -- keys -----------------------------------------------------------------------------------------

def test_key_seed_is_stable_and_distinguishes_keys():
    assert key_seed(0, "espo-elbo", 3, 1) == key_seed(0, "espo-elbo", 3, 1)
    assert 0 <= key_seed(0, "espo-elbo", 3, 1) < 2**63
    seeds = {key_seed(0, "espo-elbo", s, it) for s in range(10) for it in range(10)}
    assert len(seeds) == 100
    a = torch.rand(5, generator=keyed_generator(1, "x"))
    b = torch.rand(5, generator=keyed_generator(1, "x"))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(5, generator=keyed_generator(1, "y")))


def test_masks_do_not_touch_or_depend_on_the_global_rng():
    torch.manual_seed(123)
    m1, w1 = sample_masks((0, "k"), torch.arange(6), 6, 5)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(7)  # a different global RNG state must not change the masks
    m2, w2 = sample_masks((0, "k"), torch.arange(6), 6, 5)
    assert torch.equal(m1, m2) and torch.equal(w1, w2)
    torch.manual_seed(123)
    sample_masks((0, "k"), torch.arange(6), 6, 5)
    assert torch.equal(torch.rand(3), after)  # global stream not consumed


# -- coupled masks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stratified", [True, False])
def test_coupled_masks_partition_the_completion_with_complementary_weights(stratified):
    length = 5
    for step in range(40):
        rows = torch.arange(7)
        masked, weight = sample_masks((3, "t", step), rows, 7, length, coupled=True, stratified=stratified)
        assert masked.shape == (7, 2, length) and masked.dtype == torch.bool
        assert weight.shape == (7, 2)
        assert bool((masked[:, 0] ^ masked[:, 1]).all())  # every token scored exactly once per pair
        counts = masked[:, 0].sum(-1)
        assert int(counts.min()) >= 0 and int(counts.max()) <= length
        assert torch.equal(masked[:, 1].sum(-1), length - counts)
        for l, (w0, w1) in zip(counts.tolist(), weight.tolist()):
            assert w0 == pytest.approx((length + 1) / l if l > 0 else 0.0)
            assert w1 == pytest.approx((length + 1) / (length - l) if l < length else 0.0)


@pytest.mark.parametrize("stratified", [True, False])
def test_uncoupled_masks_have_at_least_one_token_and_weight_L_over_l(stratified):
    length = 4
    for step in range(40):
        masked, weight = sample_masks((3, "u", step), torch.arange(5), 5, length, coupled=False, stratified=stratified)
        assert masked.shape == (5, 1, length) and weight.shape == (5, 1)
        counts = masked[:, 0].sum(-1)
        assert int(counts.min()) >= 1 and int(counts.max()) <= length
        assert torch.allclose(weight[:, 0], length / counts.float())


def test_mask_counts_match_the_masks():
    key, rows = (9, "c"), torch.arange(11)
    for coupled in (True, False):
        for stratified in (True, False):
            counts = mask_counts(key, rows, 11, 6, coupled=coupled, stratified=stratified)
            masked, _ = sample_masks(key, rows, 11, 6, coupled=coupled, stratified=stratified)
            assert torch.equal(masked[:, 0].sum(-1), counts)


# -- stratification ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 3, 4, 7])
def test_stratified_counts_cover_every_stratum_once(length):
    for step in range(25):
        # coupled: l in {0..L}; N = L+1 rows -> every value exactly once
        counts = mask_counts((1, "s", step), torch.arange(length + 1), length + 1, length, coupled=True, stratified=True)
        assert sorted(counts.tolist()) == list(range(length + 1))
        # N = 2(L+1) rows -> every value exactly twice
        counts = mask_counts((1, "s2", step), torch.arange(2 * length + 2), 2 * length + 2, length, coupled=True, stratified=True)
        assert sorted(counts.tolist()) == sorted(list(range(length + 1)) * 2)
        # uncoupled: l in {1..L}; N = L rows -> every value exactly once
        counts = mask_counts((1, "s3", step), torch.arange(length), length, length, coupled=False, stratified=True)
        assert sorted(counts.tolist()) == list(range(1, length + 1))


def test_stratified_counts_are_balanced_for_any_batch_size():
    length, n = 4, 13  # 5 strata, 13 rows: every value appears 2 or 3 times
    for step in range(25):
        counts = mask_counts((2, "b", step), torch.arange(n), n, length, coupled=True, stratified=True)
        hist = torch.bincount(counts, minlength=length + 1)
        assert int(hist.min()) >= n // (length + 1) and int(hist.max()) <= n // (length + 1) + 1


@pytest.mark.parametrize("coupled,stratified", list(itertools.product([True, False], [True, False])))
def test_a_single_rows_count_is_marginally_uniform(coupled, stratified):
    length, n_keys = 4, 2000
    counts = torch.stack([mask_counts((5, "m", k), torch.tensor([2]), 6, length, coupled=coupled, stratified=stratified)[0]
                          for k in range(n_keys)])
    low = 0 if coupled else 1
    assert int(counts.min()) == low and int(counts.max()) == length
    hist = torch.bincount(counts - low, minlength=length + 1 - low)
    assert _chi2(hist) < 25.0  # df <= 4: p ~ 1e-4; a biased scheme (e.g. no +low shift) fails by a mile


def test_masked_subsets_are_uniform_given_their_size():
    """Given l, each position is masked with probability l/L (a uniform random subset)."""
    length, n = 5, 3000
    masked, _ = sample_masks((4, "pos"), torch.arange(n), n, length, coupled=False, stratified=True)
    first = masked[:, 0]
    counts = first.sum(-1)
    for l in range(1, length + 1):
        rows = first[counts == l]
        assert rows.shape[0] > 400
        freq = rows.float().mean(0)
        se = (l / length * (1 - l / length) / rows.shape[0]) ** 0.5 + 1e-9
        assert torch.all((freq - l / length).abs() <= 5 * se + 1e-6), (l, freq)


# -- independence of the micro-batch split ------------------------------------------------------------

@pytest.mark.parametrize("coupled,stratified", list(itertools.product([True, False], [True, False])))
def test_masks_do_not_depend_on_the_micro_batch_split(coupled, stratified):
    n, length, key = 10, 6, (0, "espo-elbo", 4, 1, 0)
    full_m, full_w = sample_masks(key, torch.arange(n), n, length, coupled=coupled, stratified=stratified)
    parts = [sample_masks(key, torch.arange(s, min(s + 3, n)), n, length, coupled=coupled, stratified=stratified)
             for s in range(0, n, 3)]
    assert torch.equal(full_m, torch.cat([p[0] for p in parts]))
    assert torch.equal(full_w, torch.cat([p[1] for p in parts]))
    # an arbitrary (shuffled) subset of rows gets exactly the rows' full-batch masks
    idx = torch.tensor([7, 2, 9])
    sub_m, sub_w = sample_masks(key, idx, n, length, coupled=coupled, stratified=stratified)
    assert torch.equal(sub_m, full_m[idx]) and torch.equal(sub_w, full_w[idx])


def test_masks_change_with_the_key():
    a, _ = sample_masks((0, "k", 0), torch.arange(8), 8, 6)
    b, _ = sample_masks((0, "k", 1), torch.arange(8), 8, 6)
    assert not torch.equal(a, b)


# -- prompt masks (d1 mean-field) ----------------------------------------------------------------------

def test_prompt_masks_rate_padding_and_determinism():
    n, width = 400, 12
    prompt_mask = torch.ones(n, width, dtype=torch.long)
    prompt_mask[:, :4] = 0  # left padding
    m = prompt_masks((0, "mf", 1), torch.arange(n), prompt_mask, 0.15)
    assert m.shape == (n, width) and m.dtype == torch.bool
    assert not bool(m[:, :4].any())  # padding is never masked
    rate = m[:, 4:].float().mean().item()
    assert abs(rate - 0.15) < 0.03
    assert torch.equal(m, prompt_masks((0, "mf", 1), torch.arange(n), prompt_mask, 0.15))
    assert not torch.equal(m, prompt_masks((0, "mf", 2), torch.arange(n), prompt_mask, 0.15))
    # micro-batch independence
    assert torch.equal(m[5:9], prompt_masks((0, "mf", 1), torch.arange(5, 9), prompt_mask[5:9], 0.15))


def test_a_rows_prompt_mask_ignores_the_batchs_padding():
    """A row's prompt mask depends only on its key and its own real tokens: the same row alone and
    left-padded next to a longer prompt gets the same mask over its real tokens, padding never masked."""
    own = 5
    alone = prompt_masks((0, "mf", 1), torch.tensor([3]), torch.ones(1, own, dtype=torch.long), 0.5)
    for width in (6, 9, 17):
        batch_mask = torch.ones(2, width, dtype=torch.long)
        batch_mask[0, : width - own] = 0  # row 3 left-padded to row 4's longer prompt
        m = prompt_masks((0, "mf", 1), torch.tensor([3, 4]), batch_mask, 0.5)
        assert not bool(m[0, : width - own].any())
        assert torch.equal(m[0, width - own:], alone[0])
    assert bool(alone.any()) and not bool(alone.all())  # p = 0.5 over 5 tokens: a real, non-trivial mask


# -- SPG block masks ------------------------------------------------------------------------------

from dllm_rl.diffusion.masking import block_masks, stratified_steps  # noqa: E402


@pytest.mark.parametrize("valid, block", [(7, 3), (9, 3), (1, 4), (8, 8), (5, 2)])
def test_block_masks_follow_the_denoising_shape(valid, block):
    """Earlier blocks clean, 1..n_b of block b's valid tokens masked, everything after them masked."""
    length, draws = 9, 6
    masks = block_masks(("k",), torch.arange(40), torch.full((40,), valid), length, block, draws)
    blocks_seen = set()
    for row in masks:
        for m in row.tolist():
            first = m.index(True)
            b = first // block
            start, n_b = b * block, min(block, valid - b * block)
            assert start < valid and not any(m[:start])
            assert 1 <= sum(m[start:start + n_b]) <= n_b
            assert all(m[start + n_b:])
            blocks_seen.add(b)
    assert blocks_seen == set(range((valid - 1) // block + 1))  # every block holding valid tokens gets picked


def test_block_masks_draw_distinct_blocks_while_there_are_enough():
    masks = block_masks(("k",), torch.arange(20), torch.full((20,), 9), 9, 3, 3)
    for row in masks:
        assert sorted(m.tolist().index(True) // 3 for m in row) == [0, 1, 2]


def test_block_mask_counts_are_uniform_within_the_block():
    masks = block_masks(("u",), torch.arange(3000), torch.full((3000,), 4), 4, 4, 1)
    counts = torch.bincount(masks[:, 0].sum(-1), minlength=5)[1:]  # l in 1..4
    assert _chi2(counts) < 20  # 3 dof; p ~ 2e-4


def test_block_masks_are_keyed_by_row_not_by_batch():
    valid = torch.tensor([5, 3, 8, 1, 6])
    full = block_masks(("k", 1), torch.arange(5), valid, 8, 3, 2)
    for idx in ([0, 1], [2, 3, 4], [4]):
        part = block_masks(("k", 1), torch.tensor(idx), valid[idx], 8, 3, 2)
        assert torch.equal(part, full[idx])
    assert not torch.equal(full, block_masks(("k", 2), torch.arange(5), valid, 8, 3, 2))


# -- AGRPO step sampling --------------------------------------------------------------------------

@pytest.mark.parametrize("total, per_row", [(12, 4), (10, 3), (5, 5), (3, 8), (7, 1)])
def test_stratified_steps_take_one_step_per_stratum_with_its_size_as_weight(total, per_row):
    steps, weights = stratified_steps(("s",), torch.arange(50), total, per_row)
    n = min(per_row, total)
    assert steps.shape == weights.shape == (50, n)
    assert float(weights[0].sum()) == total
    edges = [0] + torch.cumsum(weights[0], 0).long().tolist()
    for j in range(n):
        assert bool(((steps[:, j] >= edges[j]) & (steps[:, j] < edges[j + 1])).all())


def test_stratified_steps_are_unbiased_for_the_sum_over_steps():
    """E[sum_j w_j f(s_j)] = sum_s f(s): each step of a stratum is equally likely."""
    steps, weights = stratified_steps(("u",), torch.arange(6000), 10, 3)  # strata 0-2, 3-5, 6-9
    counts = torch.bincount(steps.flatten(), minlength=10)
    for lo, hi in ((0, 3), (3, 6), (6, 10)):
        assert _chi2(counts[lo:hi]) < 20
    f = torch.arange(10.0) ** 2
    estimate = (weights * f[steps]).sum(1).mean()
    assert float(estimate) == pytest.approx(float(f.sum()), rel=0.02)


def test_stratified_steps_are_keyed_by_row():
    full, _ = stratified_steps(("k",), torch.arange(6), 9, 3)
    part, _ = stratified_steps(("k",), torch.tensor([4, 1]), 9, 3)
    assert torch.equal(part, full[[4, 1]])

"""Rollout batches: valid-token masks, row selection and micro-batching."""
import torch

from dllm_rl.rl.rollout import RolloutBatch, valid_token_mask

EOS, EOT = 2, 7


def test_valid_tokens_run_up_to_and_including_the_first_stop():
    c = torch.tensor([
        [5, 6, EOS, 8, EOS],
        [5, 6, 8, 9, 4],
        [EOS, 5, 6, 8, 9],
        [5, EOT, 6, EOS, 9],
    ])
    want = [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
    ]
    assert valid_token_mask(c, (EOS, EOT)).long().tolist() == want
    # with only EOS as stop token, the EOT in row 3 is an ordinary token
    assert valid_token_mask(c, (EOS,))[3].long().tolist() == [1, 1, 1, 1, 0]
    assert valid_token_mask(c, ()).all()


def make_batch(n=5, length=4):
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(3, 9, (n, length), generator=g)
    return RolloutBatch(
        prompt_ids=torch.arange(n * 3).view(n, 3), prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=comp, valid_mask=valid_token_mask(comp, (EOS,)), rewards=torch.arange(n).float(),
        advantages=torch.arange(n).float() - 2, rows=torch.arange(n), groups=torch.arange(n) // 1, commit_step=torch.zeros(n, length, dtype=torch.long),
        sample_logprobs=-torch.rand(n, length, generator=g), step=7, num_rows=n, num_groups=n, total_valid_tokens=n * length)


def test_select_slices_every_tensor_and_keeps_the_constants():
    b = make_batch()
    idx = torch.tensor([3, 1])
    mb = b.select(idx)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "valid_mask", "rewards", "advantages", "rows",
                 "commit_step", "sample_logprobs"):
        assert torch.equal(getattr(mb, name), getattr(b, name)[idx]), name
    assert mb.rows.tolist() == [3, 1]  # rows keep their full-batch index (keys the masks)
    assert (mb.step, mb.num_rows, mb.total_valid_tokens) == (7, 5, 20)
    assert mb.gen_length == 4
    seqs = mb.sequences()
    assert torch.equal(seqs.rows, idx) and seqs.num_rows == 5 and torch.equal(seqs.completion_ids, mb.completion_ids)
    assert b.completion_ids.shape[0] == 5  # the original batch is untouched


def test_micro_batches_cover_the_rows_in_order():
    b = make_batch(n=5)
    parts = list(b.micro_batches(2))
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert [p.tolist() for p in b.micro_batches(8)] == [[0, 1, 2, 3, 4]]
    assert [p.tolist() for p in b.micro_batches(1)] == [[i] for i in range(5)]

import torch

from inductionlab.data import BOS, RepeatedTokens, induction_mask


def test_sequences_repeat_with_their_period_and_bos():
    g = RepeatedTokens(256, 80, 20, 29, bos=True, period_mode="sequence", seed=3)
    b = g.sample(64)
    assert b.tokens.shape == (64, 80)
    assert torch.all(b.tokens[:, 0] == BOS) and torch.all(b.tokens[:, 1:] != BOS)
    assert len(set(b.periods.tolist())) > 1
    for seq, p in zip(b.tokens, b.periods.tolist()):
        body = seq[1:]
        assert torch.equal(body[p:], body[:-p])
        assert 20 <= p <= 29


def test_period_per_batch_and_fixed_override():
    g = RepeatedTokens(100, 40, 5, 9, bos=False, period_mode="batch", seed=0)
    assert len(set(g.sample(16).periods.tolist())) == 1
    b = g.sample(4, period=7)
    assert b.periods.tolist() == [7] * 4 and torch.equal(b.tokens[:, 7:], b.tokens[:, :-7])


def test_deterministic_from_seed_and_resumable():
    a, b = RepeatedTokens(256, 80, 20, 29, seed=11), RepeatedTokens(256, 80, 20, 29, seed=11)
    assert torch.equal(a.sample(8).tokens, b.sample(8).tokens)
    state = a.state_dict()
    x = a.sample(8).tokens
    a.load_state_dict(state)
    assert torch.equal(a.sample(8).tokens, x)
    assert not torch.equal(RepeatedTokens(256, 80, 20, 29, seed=12).sample(8).tokens,
                           RepeatedTokens(256, 80, 20, 29, seed=11).sample(8).tokens)


def test_induction_mask_marks_targets_seen_one_period_back():
    m = induction_mask(torch.tensor([3]), seq_len=8, bos=True)
    # predictions at positions 0..6 of tokens 1..7; token at position t has content index t-1;
    # it repeats when content index >= 3, i.e. positions 4..7 -> predictions 3..6
    assert m[0].tolist() == [False, False, False, True, True, True, True]
    m = induction_mask(torch.tensor([2]), seq_len=5, bos=False)
    assert m[0].tolist() == [False, True, True, True]

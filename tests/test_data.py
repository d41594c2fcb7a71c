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


def test_induction_mask_marks_predictions_made_from_a_repeated_token():
    m = induction_mask(torch.tensor([3]), seq_len=8, bos=True)
    # [BOS] a b c a b c a: predictions at positions 0..6; the token at position i has content
    # index i-1 and occurred one period earlier iff i-1 >= 3, i.e. predictions 4..6. The
    # prediction at position 3 (from the last token of the first copy, 'c', never seen before,
    # of the first token of the second copy) is not an induction position.
    assert m[0].tolist() == [False, False, False, False, True, True, True]
    m = induction_mask(torch.tensor([2]), seq_len=5, bos=False)
    # a b a b a: predictions at 0..3; the token at i repeats iff i >= 2
    assert m[0].tolist() == [False, False, True, True]


def test_induction_mask_positions_are_exactly_the_predictable_ones():
    """On real batches, every masked prediction's target is the successor of the previous
    occurrence of the current token one period back, and every unmasked prediction is made
    from a token not seen one period earlier (so a perfect induction circuit scores 1.0)."""
    b = RepeatedTokens(256, 80, 5, 29, period_mode="sequence", seed=3).sample(64)
    toks, m = b.tokens, b.induction_mask
    for row in range(toks.shape[0]):
        p = int(b.periods[row])
        for i in range(toks.shape[1] - 1):
            seen = i - p >= 1 and bool(toks[row, i - p] == toks[row, i])  # position 0 is BOS
            assert bool(m[row, i]) == (i - 1 >= p)
            if m[row, i]:
                assert seen and toks[row, i - p + 1] == toks[row, i + 1]
    # the oracle "copy the token after the one a period back" is right on every masked prediction
    from inductionlab.metrics.induction import induction_accuracy
    logits = torch.full((*toks.shape, 256), -1e9)
    for row in range(toks.shape[0]):
        p = int(b.periods[row])
        for i in range(p + 1, toks.shape[1] - 1):
            logits[row, i, toks[row, i - p + 1]] = 0.0
    assert float(induction_accuracy(logits, toks, m)) == 1.0

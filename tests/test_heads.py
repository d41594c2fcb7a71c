"""Per-head scores on hand-built attention patterns whose right answer is known."""

import torch

from inductionlab.metrics import (
    induction_accuracy,
    induction_loss,
    loss_by_position,
    prefix_matching_score,
    previous_token_score,
)

T, P = 13, 4  # BOS + 12 content tokens = 3 repeats of period 4


def pattern_from(fn):
    """[1, 1, T, T] pattern where query q attends fully to key fn(q)."""
    p = torch.zeros(1, 1, T, T)
    for q in range(T):
        p[0, 0, q, fn(q)] = 1.0
    return p


def test_previous_token_head_scores_one():
    p = pattern_from(lambda q: max(q - 1, 0))
    assert previous_token_score(p, bos=True).item() == 1.0
    assert prefix_matching_score(p, torch.tensor([P]), bos=True).item() == 0.0


def test_induction_head_scores_one_one_or_two_periods_back():
    # query q (content c = q-1 >= P) attends to content c-P+1, i.e. position q-P+1
    one_back = pattern_from(lambda q: q - P + 1 if q - 1 >= P else 0)
    assert prefix_matching_score(one_back, torch.tensor([P])).item() == 1.0
    two_back = pattern_from(lambda q: q - 2 * P + 1 if q - 1 >= 2 * P else (q - P + 1 if q - 1 >= P else 0))
    assert prefix_matching_score(two_back, torch.tensor([P])).item() == 1.0
    assert previous_token_score(one_back).item() < 0.2


def test_bos_and_self_heads_score_zero_and_uniform_is_chance():
    bos_head = pattern_from(lambda q: 0)
    assert prefix_matching_score(bos_head, torch.tensor([P])).item() == 0.0
    assert previous_token_score(bos_head).item() == 0.0
    uniform = torch.tril(torch.ones(T, T))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    # queries with content c in [4, 12): targets are the successors of the k earlier occurrences
    expect = []
    for q in range(1 + P, T):
        c = q - 1
        expect.append((c // P) / (q + 1))
    assert abs(prefix_matching_score(uniform, torch.tensor([P])).item() - sum(expect) / len(expect)) < 1e-6


def test_scores_are_per_head_and_per_sequence_period():
    a = pattern_from(lambda q: max(q - 1, 0))
    b = pattern_from(lambda q: q - 3 + 1 if q - 1 >= 3 else 0)  # induction head for period 3
    pats = torch.cat([torch.cat([a, b], 1), torch.cat([a, b], 1)], 0)  # [2, 2, T, T]
    pm = prefix_matching_score(pats, torch.tensor([3, 3]))
    assert pm.tolist() == [0.0, 1.0]
    assert previous_token_score(pats).tolist()[0] == 1.0


def test_accuracy_and_loss_on_known_logits():
    tokens = torch.tensor([[0, 5, 6, 5, 6]])
    mask = torch.tensor([[False, False, True, True]])
    logits = torch.zeros(1, 5, 10)
    logits[0, 2, 5] = 100.0  # predicts token 3 (=5) correctly
    logits[0, 3, 1] = 100.0  # predicts token 4 (=6) wrongly
    assert induction_accuracy(logits, tokens, mask).item() == 0.5
    assert abs(induction_loss(logits, tokens, mask).item() - 50.0) < 1e-3
    lbp = loss_by_position(logits, tokens)
    assert lbp.shape == (4,) and abs(lbp[0].item() - torch.log(torch.tensor(10.0)).item()) < 1e-5

"""ICL score: index choice and the late-minus-early loss."""

import math

import pytest
import torch

from inductionlab.metrics.icl import icl_indices, icl_score, icl_score_from_curve


def test_indices_paper_and_short_context():
    assert icl_indices(1024) == (50, 500)
    assert icl_indices(80) == (15, 78)
    assert icl_indices(256) == (50, 254) and icl_indices(64) == (12, 62)
    assert icl_indices(80, early=3) == (3, 78)
    assert icl_indices(80, early=5, late=40) == (5, 40)
    with pytest.raises(ValueError):
        icl_indices(80, early=50, late=40)
    with pytest.raises(ValueError):
        icl_indices(80, late=79)


def test_score_from_known_losses():
    # uniform logits over V give loss log V everywhere; make the late prediction certain
    V, T = 16, 12
    tokens = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(3, T, V)
    late = T - 2
    logits[torch.arange(3), late, tokens[:, late + 1]] = 100.0
    score, (e, l), curve = icl_score(logits, tokens)
    assert (e, l) == (late // 5, late)
    assert curve.shape == (T - 1,)
    assert abs(score + math.log(V)) < 1e-4
    assert icl_score_from_curve(torch.tensor([3.0, 2.0, 1.0]), 0, 2) == -2.0

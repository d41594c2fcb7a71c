"""Q/K/V composition scores on hand-built weights."""

import torch

from inductionlab.config import load_config
from inductionlab.metrics.composition import (
    composition_score,
    composition_scores,
    random_baseline,
)
from inductionlab.models import build_model


def test_score_known_values():
    P = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    Q = torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert float(composition_score(P, Q)) == 0.0  # orthogonal subspaces
    assert abs(float(composition_score(P, P)) - 2 ** -0.5) < 1e-6  # rank-2 projection: 1/sqrt(2)
    assert abs(float(composition_score(torch.eye(4)[:, :1] @ torch.eye(4)[:1], torch.eye(4)[:, :1] @ torch.eye(4)[:1])) - 1) < 1e-6


def test_baseline_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = random_baseline(64, 16, 50, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert a == random_baseline(64, 16, 50, seed=1)
    for v in a.values():
        assert 0.05 < v < 0.3


def _two_layer():
    cfg = load_config("induction-2l", ["model.n_heads=2", "model.d_model=8"])
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_hand_built_k_composition():
    """L0H0 writes dims 0-1 into dims 4-5; L1H1's *keys* read dims 4-5 (K-composition), its
    queries read dims 0-1; L1H0 reads and writes elsewhere."""
    model = _two_layer()
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    with torch.no_grad():
        a0.W_V[0, 0, 0] = a0.W_V[0, 1, 1] = 1.0
        a0.W_O[0, 0, 4] = a0.W_O[0, 1, 5] = 1.0
        a1.W_K[1, 4, 0] = a1.W_K[1, 5, 1] = 1.0
        a1.W_Q[1, 0, 0] = a1.W_Q[1, 1, 1] = 1.0
        a1.W_V[1, 2, 0] = a1.W_O[1, 0, 3] = 1.0
        a0.W_V[1, 6, 0] = a0.W_O[1, 0, 7] = 1.0   # L0H1: 6 -> 7, composes with nothing
        a1.W_Q[0, 3, 0] = a1.W_K[0, 3, 0] = 1.0   # L1H0 reads dim 3 only
        a1.W_V[0, 3, 0] = a1.W_O[0, 0, 2] = 1.0
    c = composition_scores(model, baseline_samples=20)
    assert c["heads"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    src, dst = 0, 3
    assert abs(c["k"][src][dst] - 2 ** -0.5) < 1e-6
    assert c["q"][src][dst] == 0.0 and c["v"][src][dst] == 0.0
    assert c["k"][1][3] == 0.0 and c["k"][0][2] == 0.0
    for kind in "qkv":  # no score within a layer or backwards
        for i in range(4):
            for j in range(4):
                assert (c[kind][i][j] is None) == (i // 2 >= j // 2)
    assert set(c["baseline"]) == {"q", "k", "v"}

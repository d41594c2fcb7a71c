"""Copying score and OV eigenvalue positivity on hand-built weights."""

import torch

from inductionlab.metrics.copying import (
    copying_ratio,
    copying_score,
    eigenvalue_positivity,
    ov_positivity_heads,
    rescale_ratio,
    sample_tokens,
)


def test_identity_ov_copies_perfectly_and_negated_anti_copies():
    eye = torch.eye(8)
    toks = torch.arange(8)
    assert torch.allclose(copying_ratio(eye, eye, eye, toks), torch.ones(1))
    assert torch.allclose(copying_score(eye, eye, eye, toks), torch.ones(1))
    assert torch.allclose(copying_score(eye, -eye, eye, toks), -torch.ones(1))


def test_permutation_ov_copies_nothing():
    # every token sends all its logit to the *next* token: the attended token gets none
    eye, perm = torch.eye(8), torch.roll(torch.eye(8), 1, dims=1)
    assert torch.allclose(copying_score(eye, perm, eye, torch.arange(8)), -torch.ones(1))


def test_rescale_is_zero_at_chance_and_monotone():
    r = torch.tensor([0.0, 0.1, 0.5, 1.0])
    s = rescale_ratio(r, 0.1)
    assert torch.allclose(s, torch.tensor([-1.0, 0.0, 4 / 9, 1.0]))


def test_sample_tokens_seeded_distinct_and_skip_bos():
    a, b = sample_tokens(256, 200, seed=3), sample_tokens(256, 200, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 200 and int(a.min()) >= 1
    assert len(sample_tokens(10, 200)) == 9


def test_eigenvalue_positivity_known_cases():
    A = torch.eye(6)[:, :3]
    assert abs(float(eigenvalue_positivity(A, A.T)) - 1) < 1e-6
    assert abs(float(eigenvalue_positivity(A, -A.T)) + 1) < 1e-6
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues +-i
    assert abs(float(eigenvalue_positivity(rot, torch.eye(2)))) < 1e-6
    mixed = torch.diag(torch.tensor([3.0, -1.0]))
    assert abs(float(eigenvalue_positivity(mixed, torch.eye(2))) - 0.5) < 1e-6


def test_ov_positivity_matches_full_vocab_eigenvalues():
    g = torch.Generator().manual_seed(0)
    W_E, W_U = torch.randn(30, 8, generator=g), torch.randn(8, 30, generator=g)
    W_V, W_O = torch.randn(2, 8, 3, generator=g), torch.randn(2, 3, 8, generator=g)
    got = ov_positivity_heads(W_E, W_V, W_O, W_U)
    for h in range(2):
        lam = torch.linalg.eigvals((W_E @ W_V[h] @ W_O[h] @ W_U).double())
        keep = lam.abs() > 1e-6 * lam.abs().max()  # the 27 numerically-zero eigenvalues
        want = lam.real[keep].sum() / lam.abs()[keep].sum()
        assert abs(float(got[h]) - float(want)) < 1e-4

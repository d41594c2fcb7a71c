"""Copying score and OV eigenvalue positivity on hand-built weights; LayerNorm folding on a model."""

import torch

from inductionlab.configfile import load_config
from inductionlab.metrics.copying import (
    copying_chance,
    copying_ratio,
    copying_ratios,
    copying_score,
    copying_scores,
    eigenvalue_positivity,
    head_ov,
    ov_positivity,
    ov_positivity_heads,
    ratio_to_score,
    sample_tokens,
)
from inductionlab.metrics.fold import fold_layer_norm
from inductionlab.models import build_model


def test_identity_ov_copies_perfectly_and_negated_anti_copies():
    eye = torch.eye(8)
    toks = torch.arange(8)
    assert torch.allclose(copying_ratio(eye, eye, eye, toks), torch.ones(1))
    # ratio 1 = 8x chance: (1 - 1/8) / (1 + 1/8) = 7/9
    assert torch.allclose(copying_score(eye, eye, eye, toks), torch.tensor([7 / 9]))
    assert torch.allclose(copying_ratio(eye, -eye, eye, toks), torch.zeros(1))
    assert torch.allclose(copying_score(eye, -eye, eye, toks), -torch.ones(1))


def test_permutation_ov_copies_nothing():
    # every token sends all its logit to the *next* token: the attended token gets none
    eye, perm = torch.eye(8), torch.roll(torch.eye(8), 1, dims=1)
    assert torch.allclose(copying_score(eye, perm, eye, torch.arange(8)), -torch.ones(1))


def test_score_is_zero_at_chance_monotone_and_symmetric_in_the_factor():
    c = 0.01
    r = torch.tensor([0.0, c / 9, c / 3, c, 3 * c, 9 * c, 1.0])
    s = ratio_to_score(r, c)
    assert torch.allclose(s[:6], torch.tensor([-1.0, -0.8, -0.5, 0.0, 0.5, 0.8]))
    assert bool((s[1:] > s[:-1]).all())  # strictly increasing
    k = torch.tensor([1.5, 4.0, 30.0])  # k x chance and chance / k: opposite scores
    assert torch.allclose(ratio_to_score(k * c, c), -ratio_to_score(c / k, c))
    assert torch.allclose(ratio_to_score(k * c, c), torch.tanh(torch.log(k) / 2))
    assert copying_chance(256) == 1 / 256


def _ln_model(seed=0, **over):
    """A 2-layer LayerNorm model with random (non-trivial) LayerNorm weights and biases."""
    sets = [f"model.{k}={v}" for k, v in {"d_model": 16, "n_heads": 2, "vocab_size": 40, **over}.items()]
    cfg = load_config("induction-2l", sets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ln" in name or name.startswith("ln_final"):
                    p.copy_((1.0 + 0.5 * torch.randn_like(p)) if name.endswith("weight") else 0.3 * torch.randn_like(p))
                elif name.startswith(("W_", "blocks")) and p.dim() > 1:
                    p.mul_(20)
    return model


def test_fold_without_layernorm_is_the_identity():
    model = _ln_model(layernorm="false")
    w = fold_layer_norm(model)
    assert not w.folded and not w.centered
    assert torch.equal(w.W_E, model.W_E) and torch.equal(w.W_U, model.W_U)
    for (i, a), (j, f) in zip(model.attention_layers, w.attention_layers):
        assert i == j
        for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            assert torch.equal(getattr(a, k), getattr(f, k))
    m = _ln_model()  # and it never mutates a model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fold_layer_norm(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_fold_reproduces_what_the_heads_compute():
    """Folded weights applied to the *normalised* input n(x) = (x - mean)/std give the same q, k, v
    (and the same OV output direction up to the all-ones component that every later LayerNorm
    removes) as the model; the folded unembedding gives the same logits up to a constant."""
    model = _ln_model().eval()
    w = fold_layer_norm(model)
    assert w.folded and w.centered
    toks = torch.randint(1, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(toks)
    for (layer, attn), (_, f) in zip(model.attention_layers, w.attention_layers):
        x = cache[f"blocks.{layer}.hook_resid_pre"]
        ln = model.blocks[layer].ln1
        n = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=ln.eps)
        h = ln(x)
        for name in "QKV":
            got = torch.einsum("bpd,hde->bphe", n, getattr(f, f"W_{name}")) + getattr(f, f"b_{name}")
            want = torch.einsum("bpd,hde->bphe", h, getattr(attn, f"W_{name}")) + getattr(attn, f"b_{name}")
            assert torch.allclose(got, want, atol=1e-4), name
        centre = torch.eye(16) - 1 / 16  # projection off the all-ones direction
        v_f = torch.einsum("bpd,hde->bphe", n, f.W_V) + f.b_V
        v = torch.einsum("bpd,hde->bphe", h, attn.W_V) + attn.b_V
        got = torch.einsum("bphe,hed->bphd", v_f, f.W_O)
        want = torch.einsum("bphe,hed->bphd", v, attn.W_O) @ centre
        assert torch.allclose(got, want, atol=1e-4)
    final = cache[f"blocks.{len(model.blocks) - 1}.hook_resid_post"]
    n = torch.nn.functional.layer_norm(final, final.shape[-1:], eps=model.ln_final.eps)
    got, want = n @ w.W_U + w.b_U, model.ln_final(final) @ model.W_U + model.b_U
    assert torch.allclose(got, want, atol=1e-3)
    # centred embedding: the same normalised input to layer 0
    emb = model.W_E[toks]
    assert torch.allclose(torch.nn.functional.layer_norm(w.W_E[toks], (16,)),
                          torch.nn.functional.layer_norm(emb, (16,)), atol=1e-4)


def test_model_level_scores_use_the_folded_weights():
    model = _ln_model()
    w = fold_layer_norm(model)
    toks = sample_tokens(40, 200, seed=0)
    ratios, scores, pos = copying_ratios(model), copying_scores(model), ov_positivity(model)
    for layer, f in w.attention_layers:
        want = copying_ratio(w.W_E, head_ov(f), w.W_U, toks)
        assert torch.allclose(ratios[layer], want)
        assert torch.allclose(scores[layer], ratio_to_score(want, 1 / 40))
        assert torch.allclose(pos[layer], ov_positivity_heads(w.W_E, f.W_V, f.W_O, w.W_U))
    # LayerNorm weights matter: the unfolded weights give different numbers
    attn = model.blocks[1].attn
    raw = ov_positivity_heads(model.W_E, attn.W_V, attn.W_O, model.W_U)
    assert not torch.allclose(raw, pos[1], atol=1e-3)


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

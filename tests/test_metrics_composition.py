"""Q/K/V composition scores on hand-built weights; LayerNorm folding; the rotary query-key form."""

import torch

from inductionlab.configfile import load_config
from inductionlab.metrics.composition import (
    composition_score,
    composition_scores,
    composition_scores_rotary,
    head_qk,
    random_baseline,
    rotary_matrix,
)
from inductionlab.metrics.fold import fold_layer_norm
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
    cfg = load_config("induction-2l", ["model.n_heads=2", "model.d_model=8", "model.layernorm=false"])
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


# --------------------------------------------------------------------------- LayerNorm folding, rotary
def _random_model(seed=0, layernorm=True, positions="rotary", biases=True):
    """2 layers, d_model 16, 2 heads of 8; random LayerNorm parameters and biases."""
    cfg = load_config("induction-2l", ["model.d_model=16", "model.n_heads=2", "model.vocab_size=40",
                                       f"model.layernorm={str(layernorm).lower()}", f'model.positions="{positions}"'])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("weight"):  # LayerNorm scale
                    p.copy_(1.0 + 0.5 * torch.randn_like(p))
                elif name.endswith("bias") or (biases and ".b_" in name):
                    p.copy_(0.3 * torch.randn_like(p))
                else:
                    p.mul_(20)
    return model


def test_rotary_matrix_is_a_relative_rotation():
    d = 8
    assert torch.equal(rotary_matrix(0, d), torch.eye(d))
    for a, b in ((3, 1), (7, 7), (2, 5)):
        Ra, Rb = rotary_matrix(a, d).double(), rotary_matrix(b, d).double()
        assert torch.allclose(Ra @ Ra.T, torch.eye(d, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(Ra @ Rb.T, rotary_matrix(a - b, d).double(), atol=1e-6)


def test_rotary_form_equals_the_scores_the_model_computes():
    """pre-softmax score(i, j) = (n_i W_Q + b_Q) R_{i-j} (n_j W_K + b_K)^T / sqrt(d_head), with
    n = the (folded) LayerNorm input, for every query i and key j <= i and both layers; without
    LayerNorm and biases it is x_i W_Q R_{i-j} W_K^T x_j^T / sqrt(d_head)."""
    for layernorm, biases in ((False, False), (True, True)):
        model = _random_model(layernorm=layernorm, biases=biases)
        folded = dict(fold_layer_norm(model).attention_layers)
        toks = torch.randint(1, 40, (2, 20), generator=torch.Generator().manual_seed(2))
        _, cache = model.run_with_cache(toks)
        for layer, attn in model.attention_layers:
            x = cache[f"blocks.{layer}.hook_resid_pre"]
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]  # [batch, head, q, k]
            f = folded[layer]
            n = torch.nn.functional.layer_norm(x, (16,)) if layernorm else x
            q = torch.einsum("bpd,hde->bhpe", n, f.W_Q) + f.b_Q[None, :, None]
            k = torch.einsum("bpd,hde->bhpe", n, f.W_K) + f.b_K[None, :, None]
            for i in range(20):
                for j in range(i + 1):
                    R = rotary_matrix(i - j, 8)
                    want = torch.einsum("bhe,ef,bhf->bh", q[:, :, i], R, k[:, :, j]) / 8 ** 0.5
                    assert torch.allclose(scores[:, :, i, j], want, atol=1e-3, rtol=1e-4), (layer, i, j)
                    if not biases and i - j == 3:  # the weights-only form head_qk(attn, delta)
                        form = torch.einsum("bd,hde,be->bh", x[:, i], head_qk(attn, i - j), x[:, j])
                        assert torch.allclose(scores[:, :, i, j], form / 8 ** 0.5, atol=1e-3, rtol=1e-4)
            # a wrong convention (no rotation, or the adjacent-pairs layout) does not match
            R_wrong = rotary_matrix(5, 8)[[0, 4, 1, 5, 2, 6, 3, 7]][:, [0, 4, 1, 5, 2, 6, 3, 7]]
            for R in (torch.eye(8), R_wrong):
                bad = torch.einsum("bhe,ef,bhf->bh", q[:, :, 10], R, k[:, :, 5]) / 8 ** 0.5
                assert not torch.allclose(scores[:, :, 10, 5], bad, atol=1e-2)


def test_composition_uses_folded_weights_and_rotary_delta_zero_is_standard():
    model = _random_model()
    c = composition_scores(model, baseline_samples=20)
    layers = dict(fold_layer_norm(model).attention_layers)
    ov0 = layers[0].W_V @ layers[0].W_O
    want = composition_score(ov0[:, None], (layers[1].W_Q @ layers[1].W_K.transpose(-1, -2)).transpose(-1, -2)[None])
    got = torch.tensor([row[2:] for row in c["k"][:2]])
    assert torch.allclose(got, want, atol=1e-6)
    raw = _raw_k(model)
    assert not torch.allclose(got, raw, atol=1e-3)  # LayerNorm weights change the score
    r = composition_scores_rotary(model, deltas=(0, 1, 7), baseline_samples=20)
    assert r["deltas"] == [0, 1, 7] and r["heads"] == c["heads"]
    for kind in "qk":
        assert r[kind]["0"] == c[kind]
        assert r["baseline"][kind]["0"] == c["baseline"][kind]
    Wq, Wk = layers[1].W_Q, layers[1].W_K
    qk7 = Wq @ rotary_matrix(7, 8) @ Wk.transpose(-1, -2)
    want7 = composition_score(ov0[:, None], qk7[None])
    assert torch.allclose(torch.tensor([row[2:] for row in r["q"]["7"][:2]]), want7, atol=1e-6)
    assert r["q"]["7"] != r["q"]["0"]
    for kind in "qk":  # the random baseline does not depend on delta (Gaussian factors are rotation invariant)
        assert abs(r["baseline"][kind]["7"] - r["baseline"][kind]["0"]) < 0.02


def _raw_k(model):
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    return composition_score((a0.W_V @ a0.W_O)[:, None], (a1.W_K @ a1.W_Q.transpose(-1, -2))[None]).detach()


def test_without_layernorm_composition_is_on_the_raw_weights():
    model = _random_model(layernorm=False)
    c = composition_scores(model, baseline_samples=20)
    assert torch.allclose(torch.tensor([row[2:] for row in c["k"][:2]]), _raw_k(model), atol=1e-6)

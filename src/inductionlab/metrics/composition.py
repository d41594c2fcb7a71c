"""Q-, K- and V-composition scores between attention heads (Elhage et al. 2021).

For an earlier-layer head A and a later-layer head B::

    score(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

with ``W_A = W_OV^A = W_V^A W_O^A`` (``[d_model, d_model]``, row-vector convention ``x @ W``) and,
on the right, ``W_B = W_QK^B = W_Q^B W_K^B^T`` (Q-composition: A writes into B's queries),
``W_QK^B^T`` (K-composition: A writes into B's keys) or ``W_OV^B`` (V-composition). This is the
TransformerLens ``all_composition_scores`` convention. Weights only: LayerNorm scales, rotary
positions and biases are ignored.

Each score is shown beside a **baseline**: the mean score of random Gaussian factors of the same
shapes (``W_V, W_O, W_Q, W_K``), from a seeded ``torch.Generator`` (the global RNG is untouched).
For d_model = 64, d_head = 16 it is about 0.12-0.13.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .copying import head_ov


def composition_score(W_A: torch.Tensor, W_B: torch.Tensor) -> torch.Tensor:
    """``||W_A W_B||_F / (||W_A||_F ||W_B||_F)``, batched over leading dimensions."""
    num = torch.linalg.matrix_norm(W_A @ W_B)
    return num / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B)).clamp_min(1e-30)


def head_qk(attn) -> torch.Tensor:
    """``[n_heads, d_model, d_model]``: ``W_Q[h] @ W_K[h]^T``."""
    return attn.W_Q @ attn.W_K.transpose(-1, -2)


def pair_scores(ov_a: torch.Tensor, qk_b: torch.Tensor, ov_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"q"|"k"|"v": [heads_a, heads_b]}`` for ``ov_a [ha, d, d]``, ``qk_b``/``ov_b [hb, d, d]``."""
    A = ov_a[:, None]
    return {"q": composition_score(A, qk_b[None]),
            "k": composition_score(A, qk_b.transpose(-1, -2)[None]),
            "v": composition_score(A, ov_b[None])}


@lru_cache(maxsize=16)
def random_baseline(d_model: int, d_head: int, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean Q/K/V composition score of random Gaussian ``W_V, W_O, W_Q, W_K`` of the given shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(n, *shape, generator=g)

    ov_a = r(d_model, d_head) @ r(d_head, d_model)
    qk_b = r(d_model, d_head) @ r(d_head, d_model)
    ov_b = r(d_model, d_head) @ r(d_head, d_model)
    return {"q": float(composition_score(ov_a, qk_b).mean()),
            "k": float(composition_score(ov_a, qk_b.transpose(-1, -2)).mean()),
            "v": float(composition_score(ov_a, ov_b).mean())}


@torch.no_grad()
def composition_scores(model, baseline_samples: int = 200, seed: int = 0) -> dict:
    """All-pairs scores over the attention heads: ``{"heads": ["L0H0", ...], "q"|"k"|"v": square
    [src][dst] lists (None where src layer >= dst layer), "baseline": {"q", "k", "v"}}``."""
    layers = model.attention_layers
    heads = [(layer, h) for layer, attn in layers for h in range(attn.n_heads)]
    n = len(heads)
    out = {kind: [[None] * n for _ in range(n)] for kind in "qkv"}
    start, offset = {}, 0
    for layer, attn in layers:
        start[layer] = offset
        offset += attn.n_heads
    ov = {layer: head_ov(attn).float() for layer, attn in layers}
    qk = {layer: head_qk(attn).float() for layer, attn in layers}
    for la, _ in layers:
        for lb, _ in layers:
            if la >= lb:
                continue
            s = pair_scores(ov[la], qk[lb], ov[lb])
            for kind, m in s.items():
                for i in range(m.shape[0]):
                    for j in range(m.shape[1]):
                        out[kind][start[la] + i][start[lb] + j] = float(m[i, j])
    d_head = layers[0][1].d_head if layers else 1
    return {"heads": [f"L{layer}H{h}" for layer, h in heads], **out,
            "baseline": random_baseline(model.W_E.shape[1], d_head, baseline_samples, seed)}

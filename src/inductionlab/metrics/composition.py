"""Q-, K- and V-composition scores between attention heads (Elhage et al. 2021).

For an earlier-layer head A and a later-layer head B::

    score(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

with ``W_A = W_OV^A = W_V^A W_O^A`` (``[d_model, d_model]``, row-vector convention ``x @ W``) and,
on the right, ``W_B = W_QK^B = W_Q^B W_K^B^T`` (Q-composition: A writes into B's queries),
``W_QK^B^T`` (K-composition: A writes into B's keys) or ``W_OV^B`` (V-composition). This is the
TransformerLens ``all_composition_scores`` convention, on weights with LayerNorm folded in as
TransformerLens's ``fold_ln`` does it (:func:`inductionlab.metrics.fold.fold_layer_norm`; the
identity without LayerNorm). Biases and positions are ignored.

**Rotary models.** With rotary positions the query-key form between a query at position i and a
key at position j = i - delta is ``W_QK(delta) = W_Q R_delta W_K^T``, ``R_delta``
(:func:`rotary_matrix`) the rotation of the rotate-half (GPT-NeoX) convention by ``delta``
positions: block-structured, one 2x2 rotation per frequency on dims ``(f, f + d_head/2)``. The
pre-softmax score is ``x_i W_QK(delta) x_j^T / sqrt(d_head)`` (plus bias terms).
:func:`composition_scores_rotary` computes Q and K composition with ``W_QK(delta)`` for a few
``delta``; ``delta = 0`` is the standard score (``R_0 = I``).

Each score is shown beside a **baseline**: the mean score of random Gaussian factors of the same
shapes (``W_V, W_O, W_Q, W_K``), from a seeded ``torch.Generator`` (the global RNG is untouched).
For d_model = 64, d_head = 16 it is about 0.12-0.13.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

from .copying import head_ov
from .fold import fold_layer_norm

#: relative offsets (query position - key position) of :func:`composition_scores_rotary`
ROTARY_DELTAS = (0, 1, 2)


def composition_score(W_A: torch.Tensor, W_B: torch.Tensor) -> torch.Tensor:
    """``||W_A W_B||_F / (||W_A||_F ||W_B||_F)``, batched over leading dimensions."""
    num = torch.linalg.matrix_norm(W_A @ W_B)
    return num / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B)).clamp_min(1e-30)


def rotary_matrix(delta: int, d_head: int, base: float = 10000.0) -> torch.Tensor:
    """``R_delta [d_head, d_head]`` with ``rot(q_i) . rot(k_j) = q_i R_delta k_j^T`` for
    ``delta = i - j`` (row vectors), for the rotate-half rotary of ``models/attention.py``.

    For frequency ``f < d_head/2`` with angle ``a = delta * base^(-2f/d_head)``, the block on dims
    ``(f, f + d_head/2)`` is ``[[cos a, sin a], [-sin a, cos a]]``; ``R_0 = I``."""
    half = d_head // 2
    inv = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    ang = delta * inv
    f = torch.arange(half)
    R = torch.zeros(d_head, d_head, dtype=torch.float64)
    R[f, f] = R[f + half, f + half] = ang.cos()
    R[f, f + half] = ang.sin()
    R[f + half, f] = -ang.sin()
    return R.float()


def head_qk(attn, delta: int | None = None) -> torch.Tensor:
    """``[n_heads, d_model, d_model]``: ``W_Q[h] @ W_K[h]^T``, or ``W_Q[h] @ R_delta @ W_K[h]^T``."""
    if delta is None:
        return attn.W_Q @ attn.W_K.transpose(-1, -2)
    R = rotary_matrix(delta, attn.W_Q.shape[-1]).to(attn.W_Q)
    return attn.W_Q @ R @ attn.W_K.transpose(-1, -2)


def pair_scores(ov_a: torch.Tensor, qk_b: torch.Tensor, ov_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"q"|"k"|"v": [heads_a, heads_b]}`` for ``ov_a [ha, d, d]``, ``qk_b``/``ov_b [hb, d, d]``
    (no ``"v"`` when ``ov_b`` is None)."""
    A = ov_a[:, None]
    out = {"q": composition_score(A, qk_b[None]),
           "k": composition_score(A, qk_b.transpose(-1, -2)[None])}
    if ov_b is not None:
        out["v"] = composition_score(A, ov_b[None])
    return out


def _random_factors(d_model: int, d_head: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(n, *shape, generator=g)

    return {"ov_a": r(d_model, d_head) @ r(d_head, d_model), "W_Q": r(d_model, d_head),
            "W_K_T": r(d_head, d_model), "ov_b": r(d_model, d_head) @ r(d_head, d_model)}


def _qk_baseline(f: dict[str, torch.Tensor], R: torch.Tensor | None = None) -> dict[str, float]:
    """Mean Q and K composition scores of the random factors ``f`` with ``W_QK = W_Q W_K^T``, or
    ``W_Q R W_K^T``."""
    qk_b = f["W_Q"] @ f["W_K_T"] if R is None else f["W_Q"] @ R @ f["W_K_T"]
    return {"q": float(composition_score(f["ov_a"], qk_b).mean()),
            "k": float(composition_score(f["ov_a"], qk_b.transpose(-1, -2)).mean())}


@lru_cache(maxsize=16)
def random_baseline(d_model: int, d_head: int, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean Q/K/V composition score of random Gaussian ``W_V, W_O, W_Q, W_K`` of the given shapes
    (:func:`random_baseline_rotary` at ``delta = 0``, plus V composition)."""
    f = _random_factors(d_model, d_head, n, seed)
    return {**_qk_baseline(f), "v": float(composition_score(f["ov_a"], f["ov_b"]).mean())}


@lru_cache(maxsize=64)
def random_baseline_rotary(d_model: int, d_head: int, delta: int, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean Q/K composition score with ``W_QK = W_Q R_delta W_K^T`` of random Gaussian factors
    (the factors of :func:`random_baseline`, so ``delta = 0`` gives its ``q`` and ``k``)."""
    return _qk_baseline(_random_factors(d_model, d_head, n, seed), rotary_matrix(delta, d_head))


def _all_pairs(layers, score: Callable[[int, int], dict[str, torch.Tensor]], kinds: str) -> dict:
    """``{"heads": [...], kind: square [src][dst] list}`` from ``score(la, lb) -> {kind: [ha, hb]}``
    over layer pairs ``la < lb`` (None elsewhere)."""
    heads = [(layer, h) for layer, attn in layers for h in range(attn.n_heads)]
    out = {kind: [[None] * len(heads) for _ in heads] for kind in kinds}
    start, offset = {}, 0
    for layer, attn in layers:
        start[layer] = offset
        offset += attn.n_heads
    for la, _ in layers:
        for lb, _ in layers:
            if la >= lb:
                continue
            for kind, m in score(la, lb).items():
                for i in range(m.shape[0]):
                    for j in range(m.shape[1]):
                        out[kind][start[la] + i][start[lb] + j] = float(m[i, j])
    return {"heads": [f"L{layer}H{h}" for layer, h in heads], **out}


@torch.no_grad()
def composition_scores(model, baseline_samples: int = 200, seed: int = 0) -> dict:
    """All-pairs scores over the attention heads (LayerNorm folded): ``{"heads": ["L0H0", ...],
    "q"|"k"|"v": square [src][dst] lists (None where src layer >= dst layer), "baseline": {"q", "k", "v"}}``."""
    layers = fold_layer_norm(model).attention_layers
    ov = {layer: head_ov(attn) for layer, attn in layers}
    qk = {layer: head_qk(attn) for layer, attn in layers}
    out = _all_pairs(layers, lambda la, lb: pair_scores(ov[la], qk[lb], ov[lb]), "qkv")
    d_head = layers[0][1].d_head if layers else 1
    return {**out, "baseline": random_baseline(model.W_E.shape[1], d_head, baseline_samples, seed)}


@torch.no_grad()
def composition_scores_rotary(model, deltas: Sequence[int] = ROTARY_DELTAS, baseline_samples: int = 200,
                              seed: int = 0) -> dict:
    """Q and K composition with the rotary query-key form ``W_Q R_delta W_K^T`` (LayerNorm folded):
    ``{"heads": [...], "deltas": [...], "q"|"k": {str(delta): square [src][dst] list},
    "baseline": {"q"|"k": {str(delta): float}}}``."""
    layers = fold_layer_norm(model).attention_layers
    ov = {layer: head_ov(attn) for layer, attn in layers}
    d_head = layers[0][1].d_head if layers else 2
    out: dict = {"heads": None, "deltas": list(deltas), "q": {}, "k": {}, "baseline": {"q": {}, "k": {}}}
    for delta in deltas:
        qk = {layer: head_qk(attn, delta) for layer, attn in layers}
        sq = _all_pairs(layers, lambda la, lb: pair_scores(ov[la], qk[lb]), "qk")
        base = random_baseline_rotary(model.W_E.shape[1], d_head, delta, baseline_samples, seed)
        out["heads"] = sq["heads"]
        for kind in "qk":
            out[kind][str(delta)] = sq[kind]
            out["baseline"][kind][str(delta)] = base[kind]
    if out["heads"] is None:
        out["heads"] = []
    return out

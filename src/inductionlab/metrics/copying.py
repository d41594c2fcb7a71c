"""Copying score and OV eigenvalue positivity of each attention head (weights only).

Both read the *direct path* token -> ``W_E`` -> head OV (``W_V W_O``) -> ``W_U`` with LayerNorm
folded in as TransformerLens's ``fold_ln`` does it (:func:`inductionlab.metrics.fold.fold_layer_norm`:
LayerNorm scales and biases folded into the adjacent weights, ``W_E``/``W_O`` centred; the identity
for a model without LayerNorm), ignoring positions, LayerNorm's per-position 1/std and other layers.

* **copying ratio** (Olsson et al. 2022, appendix): for ``n_tokens`` random non-BOS tokens ``t``,
  ``logits = W_E[t] W_V W_O W_U``; subtract the mean logit; ReLU; ``ratio = relu[t] / sum(relu)``
  (the share of the positive logit mass that lands on the attended token itself); averaged over the
  tokens. By symmetry a head with no token structure has expected ratio ``chance = 1/d_vocab``.
* **copying score** ``(ratio - chance) / (ratio + chance) = tanh(ln(ratio / chance) / 2)``, in
  ``(-1, 1)``: 0 at chance, symmetric in the *factor* over chance (k times chance and 1/k times
  chance give +s and -s; 3x -> +0.5, 9x -> +0.8), -1 when the attended token never gets an
  above-mean logit. One monotone map on both sides of chance (the old piecewise-linear rescaling
  had a slope 1/(1-c) above chance and 1/c below it, so +0.03 and -0.9 meant the same factor).
* **OV positivity**: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of the full OV circuit
  ``W_E W_V W_O W_U`` (``d_vocab x d_vocab``), real parts in the numerator. The nonzero eigenvalues
  of ``AB`` equal those of ``BA``, so they are taken from the ``d_head x d_head`` product
  ``W_O W_U W_E W_V``. ``+1``: all eigenvalues positive (copying), ``-1``: all negative.
"""

from __future__ import annotations

import torch

from .fold import fold_layer_norm


def head_ov(attn) -> torch.Tensor:
    """``[n_heads, d_model, d_model]``: ``W_V[h] @ W_O[h]`` (row-vector convention ``x @ W``)."""
    return attn.W_V @ attn.W_O


def copying_chance(d_vocab: int) -> float:
    """Expected copying ratio of a head with no token structure: ``1 / d_vocab``."""
    return 1.0 / d_vocab


def ratio_to_score(ratio: torch.Tensor, chance: float) -> torch.Tensor:
    """``(ratio - chance) / (ratio + chance)``: 0 at chance, -1 at ratio 0, ``+s``/``-s`` at k and
    1/k times chance (``= tanh(ln(ratio / chance) / 2)``, monotone increasing)."""
    return (ratio - chance) / (ratio + chance)


def copying_ratio(W_E: torch.Tensor, W_OV: torch.Tensor, W_U: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_heads]`` mean over ``tokens`` of relu(logit - mean)[t] / sum relu(logit - mean).

    ``W_E [d_vocab, d_model]``, ``W_OV [n_heads, d_model, d_model]``, ``W_U [d_model, d_vocab]``."""
    if W_OV.dim() == 2:
        W_OV = W_OV[None]
    x = W_E[tokens].float()  # [n, d_model]
    logits = torch.einsum("nd,hde,ev->hnv", x, W_OV.float(), W_U.float())
    pos = torch.relu(logits - logits.mean(-1, keepdim=True))
    own = pos.gather(-1, tokens[None, :, None].expand(pos.shape[0], -1, 1))[..., 0]
    ratio = own / pos.sum(-1).clamp_min(1e-12)
    return ratio.mean(-1)


def copying_score(W_E: torch.Tensor, W_OV: torch.Tensor, W_U: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_heads]`` copying score in ``[-1, 1)`` (0 = chance); see the module docstring."""
    return ratio_to_score(copying_ratio(W_E, W_OV, W_U, tokens), copying_chance(W_U.shape[-1]))


def sample_tokens(d_vocab: int, n: int = 200, seed: int = 0, first: int = 1) -> torch.Tensor:
    """``n`` distinct tokens from ``[first, d_vocab)`` (all of them if fewer), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(d_vocab - first, generator=g) + first
    return perm[: min(n, d_vocab - first)].sort().values


def eigenvalue_positivity(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``sum(Re lambda) / sum(|lambda|)`` of the eigenvalues of ``A @ B``, computed from ``B @ A``.

    ``A [..., n, r]``, ``B [..., r, n]`` with ``r <= n``: batched over leading dims."""
    small = (B.double() @ A.double())
    lam = torch.linalg.eigvals(small)
    return (lam.real.sum(-1) / lam.abs().sum(-1).clamp_min(1e-30)).float()


@torch.no_grad()
def ov_positivity_heads(W_E: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor, W_U: torch.Tensor) -> torch.Tensor:
    """``[n_heads]`` positivity of the full OV circuit ``W_E W_V[h] W_O[h] W_U``."""
    A = W_E[None] @ W_V  # [h, d_vocab, d_head]
    B = W_O @ W_U[None]  # [h, d_head, d_vocab]
    return eigenvalue_positivity(A, B)


@torch.no_grad()
def copying_ratios(model, n_tokens: int = 200, seed: int = 0, bos: bool = True) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` raw copying ratio of every attention layer (LayerNorm folded); compare
    with :func:`copying_chance` of ``d_vocab``."""
    w = fold_layer_norm(model)
    toks = sample_tokens(w.W_E.shape[0], n_tokens, seed, first=1 if bos else 0).to(w.W_E.device)
    return {layer: copying_ratio(w.W_E, head_ov(attn), w.W_U, toks) for layer, attn in w.attention_layers}


@torch.no_grad()
def copying_scores(model, n_tokens: int = 200, seed: int = 0, bos: bool = True) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` copying score (:func:`ratio_to_score` of the ratio) of every attention layer."""
    chance = copying_chance(model.W_U.shape[-1])
    return {layer: ratio_to_score(r, chance) for layer, r in copying_ratios(model, n_tokens, seed, bos).items()}


@torch.no_grad()
def ov_positivity(model) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` OV eigenvalue positivity of every attention layer (LayerNorm folded)."""
    w = fold_layer_norm(model)
    return {layer: ov_positivity_heads(w.W_E, attn.W_V, attn.W_O, w.W_U) for layer, attn in w.attention_layers}

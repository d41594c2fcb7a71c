"""Copying score and OV eigenvalue positivity of each attention head (weights only).

Both read the *direct path* token -> ``W_E`` -> head OV (``W_V W_O``) -> ``W_U``, ignoring
LayerNorm scales, positions and other layers (the standard weight-based convention).

* **copying score** (Olsson et al. 2022, appendix): for ``n_tokens`` random non-BOS tokens ``t``,
  ``logits = W_E[t] W_V W_O W_U``; subtract the mean logit; ReLU; ``ratio = relu[t] / sum(relu)``
  (the share of the positive logit mass that lands on the attended token itself); averaged over the
  tokens. By symmetry a head with no token structure has expected ratio ``chance = 1/d_vocab``.
  The mean ratio is rescaled piecewise-linearly to ``[-1, 1]`` *relative to chance*:
  ``0`` at chance, ``+1`` when every token puts all its positive logit on itself, ``-1`` when the
  attended token never gets a positive (above-mean) logit (an anti-copying head).
* **OV positivity**: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of the full OV circuit
  ``W_E W_V W_O W_U`` (``d_vocab x d_vocab``), real parts in the numerator. The nonzero eigenvalues
  of ``AB`` equal those of ``BA``, so they are taken from the ``d_head x d_head`` product
  ``W_O W_U W_E W_V``. ``+1``: all eigenvalues positive (copying), ``-1``: all negative.
"""

from __future__ import annotations

import torch


def head_ov(attn) -> torch.Tensor:
    """``[n_heads, d_model, d_model]``: ``W_V[h] @ W_O[h]`` (row-vector convention ``x @ W``)."""
    return attn.W_V @ attn.W_O


def rescale_ratio(ratio: torch.Tensor, chance: float) -> torch.Tensor:
    """Map a ratio in ``[0, 1]`` to ``[-1, 1]``: ``0 -> -1``, ``chance -> 0``, ``1 -> 1`` (linear on each side)."""
    return torch.where(ratio >= chance, (ratio - chance) / (1 - chance), (ratio - chance) / chance)


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
    """``[n_heads]`` copying score in ``[-1, 1]`` (0 = chance); see the module docstring."""
    return rescale_ratio(copying_ratio(W_E, W_OV, W_U, tokens), 1.0 / W_U.shape[-1])


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
def copying_scores(model, n_tokens: int = 200, seed: int = 0, bos: bool = True) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` copying score of every attention layer."""
    toks = sample_tokens(model.W_E.shape[0], n_tokens, seed, first=1 if bos else 0).to(model.W_E.device)
    return {layer: copying_score(model.W_E, head_ov(attn), model.W_U, toks) for layer, attn in model.attention_layers}


@torch.no_grad()
def ov_positivity(model) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` OV eigenvalue positivity of every attention layer."""
    return {layer: ov_positivity_heads(model.W_E, attn.W_V, attn.W_O, model.W_U)
            for layer, attn in model.attention_layers}

"""LayerNorm folded into the weights, as TransformerLens's ``fold_ln`` does it (weights only).

A pre-LayerNorm ``LN(x) = w * n(x) + b`` with ``n(x) = (x - mean x) / std x`` feeds a linear map
``W``; folding moves ``w`` and ``b`` into the map so that the map reads ``n(x)`` directly:
``W' = diag(w) W``, ``b' = b_old + b @ W``. This is :func:`fold_layer_norm`, an exact, pure copy
of TransformerLens 3.9's ``ProcessWeights.process_weights(fold_ln=True,
center_writing_weights=True, center_unembed=False, fold_value_biases=False)``
(``transformer_lens/weight_processing.py``), in its order:

1. every ``ln1`` into ``W_Q, W_K, W_V`` (biases ``b_Q, b_K, b_V`` take ``b @ W`` with the
   *unscaled* W), then ``W_Q, W_K, W_V`` are centred over ``d_model`` (``W - W.mean(d_model)``):
   ``n(x)`` sums to 0, so a constant row does nothing;
2. ``ln_final`` into the unembedding: ``b_U' = b_U + b_f @ W_U``, ``W_U' = diag(w_f) W_U``, then
   centred over ``d_model``;
3. the weights that *write* to the residual stream are centred over ``d_model``:
   ``W_E``, ``W_O`` and ``b_O`` (every reader of the stream normalises first, so the component
   along the all-ones direction is invisible to them).

Step 3 needs every reader of the residual stream to be a LayerNorm, so it runs only when the
model has LayerNorm *and* a final LayerNorm (``model.layernorm`` and ``model.final_ln``); with
``final_ln = false`` only step 1 is done (step 2 has nothing to fold). A model without LayerNorm
is returned unchanged (the identity). MLP weights are not returned (no weight metric reads them).

The model is not touched: every tensor returned is new. Positional embeddings, LayerNorm's
division by the standard deviation (a per-position scalar) and other layers stay out of the
weight metrics, as in TransformerLens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FoldedAttention:
    """One attention layer's weights with its ``ln1`` folded in (TransformerLens layout)."""

    W_Q: torch.Tensor  # [n_heads, d_model, d_head]
    W_K: torch.Tensor  # [n_heads, d_model, d_head]
    W_V: torch.Tensor  # [n_heads, d_model, d_head]
    W_O: torch.Tensor  # [n_heads, d_head, d_model]
    b_Q: torch.Tensor  # [n_heads, d_head]
    b_K: torch.Tensor  # [n_heads, d_head]
    b_V: torch.Tensor  # [n_heads, d_head]
    b_O: torch.Tensor  # [d_model]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[-1]


@dataclass(frozen=True)
class FoldedWeights:
    """Embedding, unembedding and attention weights with every LayerNorm folded in."""

    W_E: torch.Tensor  # [d_vocab, d_model]
    W_U: torch.Tensor  # [d_model, d_vocab]
    b_U: torch.Tensor  # [d_vocab]
    #: ``(layer index, FoldedAttention)`` for every attention layer, as ``model.attention_layers``
    attention_layers: list[tuple[int, FoldedAttention]]
    #: whether any LayerNorm was folded, and whether the writing weights were centred (step 3)
    folded: bool
    centered: bool


def _ln_params(ln: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(weight, bias)`` of a LayerNorm, ``None`` for ``nn.Identity``."""
    if isinstance(ln, nn.Identity):
        return None
    if not isinstance(ln, nn.LayerNorm):
        raise TypeError(f"cannot fold {type(ln).__name__}: only nn.LayerNorm and nn.Identity are supported")
    d = ln.normalized_shape[0]
    w = ln.weight if ln.weight is not None else torch.ones(d)
    b = ln.bias if ln.bias is not None else torch.zeros(d)
    return w.detach().float(), b.detach().float()


def _center_rows(W: torch.Tensor, dim: int) -> torch.Tensor:
    return W - W.mean(dim, keepdim=True)


def fold_attention(attn, ln: nn.Module) -> FoldedAttention:
    """Fold LayerNorm ``ln`` (or ``nn.Identity``) into the Q/K/V maps of ``attn`` (step 1 only)."""
    W = {k: getattr(attn, k).detach().float().clone() for k in ("W_Q", "W_K", "W_V", "W_O")}
    b = {k: getattr(attn, k).detach().float().clone() for k in ("b_Q", "b_K", "b_V", "b_O")}
    params = _ln_params(ln)
    if params is not None:
        w_ln, b_ln = params
        for n in "QKV":
            b[f"b_{n}"] = b[f"b_{n}"] + (W[f"W_{n}"] * b_ln[None, :, None]).sum(-2)
            W[f"W_{n}"] = _center_rows(W[f"W_{n}"] * w_ln[None, :, None], dim=-2)
    return FoldedAttention(**W, **b)


@torch.no_grad()
def fold_layer_norm(model) -> FoldedWeights:
    """The weights of ``model`` (a :class:`~inductionlab.models.Transformer`) with LayerNorm folded
    in as TransformerLens's ``fold_ln`` + ``center_writing_weights`` do it; see the module docstring."""
    layers = [(i, fold_attention(attn, model.blocks[i].ln1)) for i, attn in model.attention_layers]
    W_E = model.W_E.detach().float().clone()
    W_U = model.W_U.detach().float().clone()
    b_U = model.b_U.detach().float().clone()
    final = _ln_params(model.ln_final)
    if final is not None:
        w_f, b_f = final
        b_U = b_U + b_f @ W_U
        W_U = _center_rows(W_U * w_f[:, None], dim=0)
    block_lns = [_ln_params(b.ln1) is not None for b in model.blocks]
    has_ln = any(block_lns) or final is not None
    center = final is not None and all(block_lns)  # every reader of the residual stream normalises
    if center:
        W_E = _center_rows(W_E, dim=-1)
        layers = [(i, FoldedAttention(a.W_Q, a.W_K, a.W_V, _center_rows(a.W_O, dim=-1), a.b_Q, a.b_K, a.b_V,
                                      a.b_O - a.b_O.mean())) for i, a in layers]
    return FoldedWeights(W_E=W_E, W_U=W_U, b_U=b_U, attention_layers=layers, folded=has_ln, centered=center)

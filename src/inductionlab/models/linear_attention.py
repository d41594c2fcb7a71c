"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), kind ``linear``.

With a positive feature map ``phi`` (``elu(x) + 1`` by default) applied to each head's queries and
keys, head output ``i`` is

    z_i = sum_{j <= i} (phi(q_i) . phi(k_j)) v_j  /  sum_{j <= i} phi(q_i) . phi(k_j)

so the "pattern" ``A_ij = phi(q_i) . phi(k_j) / sum_{j' <= i} phi(q_i) . phi(k_j')`` is a causal
distribution over keys like softmax attention's, without the exponential. The layer is stored as
``blocks.{l}.attn`` with TransformerLens-layout weights (``W_Q, W_K, W_V: [n_heads, d_model,
d_head]``, ``W_O: [n_heads, d_head, d_model]``) and declares itself per-head attention: the head
metrics read it through those weights and ``hook_pattern`` / ``hook_z`` / ``hook_result``. (Its
weight-only Q/K composition scores are computed as for softmax attention and are a proxy only:
its score is ``phi(q) . phi(k)``, not ``q . k``.) Rotary positions rotate q and k before the
feature map; shortformer positions are added to the query/key input, as in attention.

Two paths give the same numbers: the fast path never forms the pattern (chunks of ``CHUNK``
positions: masked products inside a chunk plus a running state ``S = sum_j phi(k_j) v_j^T`` and
normaliser ``n = sum_j phi(k_j)`` of the chunks before, so memory is linear in the sequence); the
analysis path (taken only when a pattern or per-head hook is requested) materialises
``hook_attn_scores`` (the masked kernel ``phi(q_i) . phi(k_j)``) and ``hook_pattern``.

Settings: ``[model.linear]`` (:class:`LinearConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .attention import HeadAttention
from .hooks import HookContext, run

FEATURE_MAPS = ("elu", "relu")
#: positions per chunk of the fast path
CHUNK = 64


@dataclass
class LinearConfig:
    """``[model.linear]``: settings of the linear-attention layers."""

    #: phi: "elu" (elu(x) + 1, always positive) or "relu"
    feature_map: str = "elu"
    #: the normaliser is clamped to at least this (a relu feature map can make it 0)
    eps: float = 1e-6

    def validate(self, key: str, model) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"{key}.feature_map must be one of {', '.join(FEATURE_MAPS)}, got '{self.feature_map}'")
        if not self.eps > 0:
            raise ConfigError(f"{key}.eps must be > 0, got {self.eps}")


def causal_linear_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, eps: float,
                            chunk: int = CHUNK) -> torch.Tensor:
    """``z [batch, head, pos, d_head]`` from feature-mapped ``fq, fk [batch, head, pos, d_head]`` and
    ``v [batch, head, pos, d_head]``, without the ``[pos, pos]`` pattern (exactly causal)."""
    b, h, t, e = fq.shape
    state = fq.new_zeros(b, h, e, v.shape[-1])  # sum over earlier chunks of phi(k_j) v_j^T
    norm = fq.new_zeros(b, h, e, 1)  # sum over earlier chunks of phi(k_j)
    out = []
    for s in range(0, t, chunk):
        q, k, vv = fq[:, :, s:s + chunk], fk[:, :, s:s + chunk], v[:, :, s:s + chunk]
        a = (q @ k.transpose(-1, -2)).tril()  # [batch, head, c, c]: key j <= query i inside the chunk
        num = a @ vv + q @ state
        den = a.sum(-1, keepdim=True) + q @ norm
        out.append(num / den.clamp_min(eps))
        state = state + k.transpose(-1, -2) @ vv
        norm = norm + k.sum(2).unsqueeze(-1)
    return torch.cat(out, dim=2)


class LinearAttention(HeadAttention):
    """Causal linear attention, ``blocks.{l}.attn`` (read by the head metrics)."""

    Config = LinearConfig
    config_name = "linear"

    def __init__(self, cfg, name: str, settings: LinearConfig):
        super().__init__(cfg, name)
        self.feature_map, self.eps = settings.feature_map, settings.eps

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1 if self.feature_map == "elu" else F.relu(x)

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None, pos: torch.Tensor | None = None):
        """x: ``[batch, pos, d_model]`` -> ``[batch, pos, d_model]``; ``pos [pos, d_model]`` (shortformer
        positions) is added to the query and key input only."""
        n = self.name
        x_qk = x if pos is None else x + pos
        q = torch.einsum("bpd,hde->bphe", x_qk, self.W_Q) + self.b_Q
        k = torch.einsum("bpd,hde->bphe", x_qk, self.W_K) + self.b_K
        v = torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V
        q, k, v = self._rotate_and_hook(q, k, v, ctx)
        fq, fk, vh = self.phi(q).transpose(1, 2), self.phi(k).transpose(1, 2), v.transpose(1, 2)  # [b, h, p, e]
        if not self._slow(ctx):
            return self._output(causal_linear_attention(fq, fk, vh, self.eps).transpose(1, 2), ctx)
        scores = run(ctx, f"{n}.hook_attn_scores", (fq @ fk.transpose(-1, -2)).tril())  # [b, h, q, k]
        pattern = run(ctx, f"{n}.hook_pattern", scores / scores.sum(-1, keepdim=True).clamp_min(self.eps))
        z = run(ctx, f"{n}.hook_z", (pattern @ vh).transpose(1, 2))  # [batch, pos, head, d_head]
        return self._output(z, ctx)

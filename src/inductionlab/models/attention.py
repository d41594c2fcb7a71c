"""Causal multi-head attention with optional smeared keys, rotary positions and Q/K/V convs.

Weights use the TransformerLens layout: ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``,
``W_O: [n_heads, d_head, d_model]``, biases ``b_Q, b_K, b_V: [n_heads, d_head]``, ``b_O: [d_model]``.

Two paths give the same numbers: the fast path goes through ``scaled_dot_product_attention``;
the analysis path (taken only when a pattern or per-head hook is requested) materialises the
attention pattern ``[batch, head, query, key]`` as ``blocks.{l}.attn.hook_pattern``.

Kinds ``attn`` (:class:`Attention`) and ``smeared`` (:class:`SmearedAttention`) share the settings
table ``[model.attn]`` (:class:`AttnConfig`): ``smear_init`` is read by smeared layers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .conv import MAX_KERNEL, PADDINGS, CausalDepthwiseConv
from .hooks import HookContext, run
from .mixer import Mixer


@dataclass
class AttnConfig:
    """``[model.attn]``: settings of the attention layers (kinds ``attn`` and ``smeared``)."""

    #: depthwise causal conv of this kernel on Q, K and V inside attention (Primer); 0 = off
    qkv_conv: int = 0
    #: padding of those convs: "causal", or "same" (leaks the future: only to show the guard)
    qkv_padding: str = "causal"
    #: initial value of the smeared-key logit alpha (sigma(alpha) is the weight of k_j itself)
    smear_init: float = 0.0

    def validate(self, key: str, model) -> None:
        if not 0 <= self.qkv_conv <= MAX_KERNEL:
            raise ConfigError(f"{key}.qkv_conv must be in [0, {MAX_KERNEL}] (0 = off), got {self.qkv_conv}")
        if self.qkv_padding not in PADDINGS:
            raise ConfigError(f"{key}.qkv_padding must be one of {', '.join(PADDINGS)}, got '{self.qkv_padding}'")

    def approx_params(self, model) -> int:
        return 3 * model.n_heads * model.head_dim * (self.qkv_conv + 1) + model.n_heads


def rotary_tables(n_ctx: int, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    ang = torch.arange(n_ctx, dtype=torch.float32)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)  # [n_ctx, d_head], rotate-half (GPT-NeoX) convention
    return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: ``[batch, pos, head, d_head]``."""
    t = x.shape[1]
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:t, None, :].to(x.dtype) + rot * sin[:t, None, :].to(x.dtype)


class HeadAttention(Mixer):
    """What every per-head attention mixer shares (``blocks.{l}.attn``, read by the head metrics):
    the TransformerLens-layout weights, rotary tables, the Q/K/V hooks and the output projection
    (with ``hook_result`` on the analysis path). Subclasses compute ``z`` from q, k, v."""

    PER_HEAD_HOOKS = ("hook_pattern", "hook_attn_scores", "hook_z", "hook_result")
    scope = "attn"
    per_head_attention = True
    mlp_after = True

    def __init__(self, cfg, name: str):
        super().__init__()
        self.name = name
        h, d, e = cfg.n_heads, cfg.d_model, cfg.head_dim
        self.n_heads, self.d_head = h, e
        std = cfg.init_std
        self.W_Q = nn.Parameter(torch.randn(h, d, e) * std)
        self.W_K = nn.Parameter(torch.randn(h, d, e) * std)
        self.W_V = nn.Parameter(torch.randn(h, d, e) * std)
        self.W_O = nn.Parameter(torch.randn(h, e, d) * std)
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.rotary = cfg.positions == "rotary"
        if self.rotary:
            cos, sin = rotary_tables(cfg.n_ctx, e)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)

    def _rotate_and_hook(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: HookContext | None):
        """Rotary positions on q and k (``[batch, pos, head, d_head]``), then ``hook_q/k/v``."""
        if self.rotary:
            cos, sin = self.rot_cos, self.rot_sin
            if q.shape[1] > cos.shape[0]:  # longer than trained: rotary extrapolates
                cos, sin = (t.to(q.device) for t in rotary_tables(q.shape[1], self.d_head))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        n = self.name
        return run(ctx, f"{n}.hook_q", q), run(ctx, f"{n}.hook_k", k), run(ctx, f"{n}.hook_v", v)

    def _slow(self, ctx: HookContext | None) -> bool:
        """Whether a pattern or per-head hook is asked for (the analysis path)."""
        return ctx is not None and any(ctx.wants(f"{self.name}.{hk}") for hk in self.PER_HEAD_HOOKS)

    def _output(self, z: torch.Tensor, ctx: HookContext | None) -> torch.Tensor:
        """``z [batch, pos, head, d_head]`` -> ``hook_out [batch, pos, d_model]`` (per-head
        ``hook_result [batch, pos, head, d_model]`` when asked)."""
        n = self.name
        if ctx is not None and ctx.wants(f"{n}.hook_result"):
            result = run(ctx, f"{n}.hook_result", torch.einsum("bphe,hed->bphd", z, self.W_O))
            out = result.sum(2) + self.b_O
        else:
            out = z.reshape(*z.shape[:2], -1) @ self.W_O.reshape(-1, self.W_O.shape[-1]) + self.b_O
        return run(ctx, f"{n}.hook_out", out)


class Attention(HeadAttention):
    """Causal softmax attention, ``blocks.{l}.attn`` (read by the head metrics)."""

    Config = AttnConfig
    config_name = "attn"
    #: smeared keys (kind ``smeared``)
    smear = False

    def __init__(self, cfg, name: str, settings: AttnConfig):
        super().__init__(cfg, name)
        h, e = self.n_heads, self.d_head
        if self.smear:
            #: per-head smearing logit; sigma(alpha) weights k_j, 1 - sigma(alpha) weights k_{j-1}
            self.alpha = nn.Parameter(torch.full((h,), float(settings.smear_init)))
        self.qkv_conv = None
        if settings.qkv_conv:
            self.qkv_conv = nn.ModuleList(
                CausalDepthwiseConv(h * e, settings.qkv_conv, settings.qkv_padding) for _ in range(3))

    # ----------------------------------------------------------------- pieces
    def smear_weight(self) -> torch.Tensor:
        """sigma(alpha) per head (1 = no smearing)."""
        if not self.smear:
            return torch.ones(self.n_heads, device=self.W_Q.device)
        return torch.sigmoid(self.alpha)

    def _project(self, x_qk: torch.Tensor, x_v: torch.Tensor):
        h, e = self.n_heads, self.d_head
        if x_qk is x_v:  # one fused matmul for Q, K and V
            w = torch.cat([self.W_Q, self.W_K, self.W_V], 0).permute(1, 0, 2).reshape(x_v.shape[-1], 3 * h * e)
            b = torch.cat([self.b_Q, self.b_K, self.b_V], 0).reshape(3 * h * e)
            q, k, v = (x_v @ w + b).split(h * e, dim=-1)
        else:
            w = torch.cat([self.W_Q, self.W_K], 0).permute(1, 0, 2).reshape(x_qk.shape[-1], 2 * h * e)
            b = torch.cat([self.b_Q, self.b_K], 0).reshape(2 * h * e)
            q, k = (x_qk @ w + b).split(h * e, dim=-1)
            v = x_v @ self.W_V.permute(1, 0, 2).reshape(x_v.shape[-1], h * e) + self.b_V.reshape(h * e)
        if self.qkv_conv is not None:
            q, k, v = (c(t) for c, t in zip(self.qkv_conv, (q, k, v)))
        shape = (*x_v.shape[:2], h, e)
        return q.view(shape), k.view(shape), v.view(shape)

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None, pos: torch.Tensor | None = None):
        """x: ``[batch, pos, d_model]`` -> ``[batch, pos, d_model]``; ``pos [pos, d_model]`` (shortformer
        positions) is added to the query and key input only."""
        n = self.name
        q, k, v = self._project(x if pos is None else x + pos, x)
        if self.smear:
            s = torch.sigmoid(self.alpha).to(k.dtype)[None, None, :, None]
            k_prev = torch.cat([k[:, :1], k[:, :-1]], dim=1)  # k_{j-1}; position 0 keeps its own key
            k = s * k + (1 - s) * k_prev
        q, k, v = self._rotate_and_hook(q, k, v, ctx)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if not self._slow(ctx):
            z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            return self._output(z.transpose(1, 2), ctx)  # z: [batch, pos, head, d_head]
        t = q.shape[1]
        scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(self.d_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = run(ctx, f"{n}.hook_attn_scores", scores)
        pattern = run(ctx, f"{n}.hook_pattern", torch.softmax(scores, dim=-1))
        z = run(ctx, f"{n}.hook_z", (pattern @ vh).transpose(1, 2))  # [batch, pos, head, d_head]
        return self._output(z, ctx)


class SmearedAttention(Attention):
    """Attention whose key at j is ``sigma(alpha) k_j + (1 - sigma(alpha)) k_{j-1}`` (kind ``smeared``)."""

    smear = True

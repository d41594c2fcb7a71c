"""Causal multi-head attention with optional smeared keys, rotary positions and Q/K/V convs.

Weights use the TransformerLens layout: ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``,
``W_O: [n_heads, d_head, d_model]``, biases ``b_Q, b_K, b_V: [n_heads, d_head]``, ``b_O: [d_model]``.

Two paths give the same numbers: the fast path goes through ``scaled_dot_product_attention``;
the analysis path (taken only when a pattern or per-head hook is requested) materialises the
attention pattern ``[batch, head, query, key]`` as ``blocks.{l}.attn.hook_pattern``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .conv import CausalDepthwiseConv
from .hooks import HookContext, run


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


class Attention(nn.Module):
    PER_HEAD_HOOKS = ("hook_pattern", "hook_attn_scores", "hook_z", "hook_result")

    def __init__(self, cfg, name: str, smear: bool = False):
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
        self.smear = smear
        if smear:
            #: per-head smearing logit; sigma(alpha) weights k_j, 1 - sigma(alpha) weights k_{j-1}
            self.alpha = nn.Parameter(torch.full((h,), float(cfg.smear_init)))
        self.qkv_conv = None
        if cfg.qkv_conv:
            self.qkv_conv = nn.ModuleList(
                CausalDepthwiseConv(h * e, cfg.qkv_conv, cfg.conv_padding) for _ in range(3))
        self.rotary = cfg.positions == "rotary"
        if self.rotary:
            cos, sin = rotary_tables(cfg.n_ctx, e)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)

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

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None, qk_input: torch.Tensor | None = None):
        """x: ``[batch, pos, d_model]`` (the value input); ``qk_input`` defaults to ``x``
        (shortformer passes ``x + positions`` here)."""
        n = self.name
        q, k, v = self._project(x if qk_input is None else qk_input, x)
        if self.smear:
            s = torch.sigmoid(self.alpha).to(k.dtype)[None, None, :, None]
            k_prev = torch.cat([k[:, :1], k[:, :-1]], dim=1)  # k_{j-1}; position 0 keeps its own key
            k = s * k + (1 - s) * k_prev
        if self.rotary:
            cos, sin = self.rot_cos, self.rot_sin
            if q.shape[1] > cos.shape[0]:  # longer than trained: rotary extrapolates
                cos, sin = (t.to(q.device) for t in rotary_tables(q.shape[1], self.d_head))
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, cos, sin)
        q = run(ctx, f"{n}.hook_q", q)
        k = run(ctx, f"{n}.hook_k", k)
        v = run(ctx, f"{n}.hook_v", v)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        slow = ctx is not None and any(ctx.wants(f"{n}.{hk}") for hk in self.PER_HEAD_HOOKS)
        if not slow:
            z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            z = z.transpose(1, 2)  # [batch, pos, head, d_head]
            out = z.reshape(*z.shape[:2], -1) @ self.W_O.reshape(-1, self.W_O.shape[-1]) + self.b_O
            return run(ctx, f"{n}.hook_out", out)
        t = q.shape[1]
        scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(self.d_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = run(ctx, f"{n}.hook_attn_scores", scores)
        pattern = run(ctx, f"{n}.hook_pattern", torch.softmax(scores, dim=-1))
        z = run(ctx, f"{n}.hook_z", (pattern @ vh).transpose(1, 2))  # [batch, pos, head, d_head]
        if ctx.wants(f"{n}.hook_result"):
            result = run(ctx, f"{n}.hook_result", torch.einsum("bphe,hed->bphd", z, self.W_O))
            out = result.sum(2) + self.b_O
        else:
            out = z.reshape(*z.shape[:2], -1) @ self.W_O.reshape(-1, self.W_O.shape[-1]) + self.b_O
        return run(ctx, f"{n}.hook_out", out)

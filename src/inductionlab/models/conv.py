"""Depthwise causal 1-D convolution over the sequence axis (left padding only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookContext, run


class CausalDepthwiseConv(nn.Module):
    """``y[t, c] = sum_j W[c, j] * x[t - (k-1) + j, c] + b[c]``: output at t sees t-k+1 .. t only.

    ``padding="same"`` pads on both sides and so *leaks the future*; it exists only so the
    causality guard can be shown catching the bug of the original write-up.
    """

    def __init__(self, channels: int, kernel: int, padding: str = "causal", init_identity: bool = True):
        super().__init__()
        self.kernel = kernel
        self.padding = padding
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        with torch.no_grad():
            if init_identity:  # start as (almost) the identity: current token weight 1
                self.weight[:, 0, -1] = 1.0
            self.weight.add_(torch.randn_like(self.weight) * (1.0 / kernel) ** 0.5 * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[batch, pos, channels]`` -> same shape."""
        k = self.kernel
        h = x.transpose(1, 2)
        if self.padding == "causal":
            h = F.pad(h, (k - 1, 0))
        else:
            h = F.pad(h, ((k - 1) // 2, k - 1 - (k - 1) // 2))
        y = F.conv1d(h, self.weight, self.bias, groups=h.shape[1])
        return y.transpose(1, 2)

    def kernel_by_offset(self) -> torch.Tensor:
        """``[channels, k]`` weights, column i multiplying the token at offset t-i (causal layout)."""
        return self.weight[:, 0, :].flip(-1)


class ConvMixer(nn.Module):
    """A depthwise causal conv used as a layer of its own (``blocks.{l}.conv``)."""

    def __init__(self, cfg, name: str):
        super().__init__()
        self.name = name
        self.residual = cfg.conv_residual
        self.conv = CausalDepthwiseConv(cfg.d_model, cfg.conv_kernel, cfg.conv_padding,
                                        init_identity=not cfg.conv_residual)

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None) -> torch.Tensor:
        return run(ctx, f"{self.name}.hook_out", self.conv(x))

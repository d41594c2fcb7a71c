"""Depthwise causal 1-D convolution over the sequence axis (left padding only), and the conv layer.

The conv layer (kind ``conv``, ``blocks.{l}.conv``) takes its settings from ``[model.conv]``
(:class:`ConvConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .hooks import HookContext, run
from .mixer import Mixer

#: "same" pads both sides and so leaks the future: kept only to demonstrate the causality guard
PADDINGS = ("causal", "same")
#: sanity bound on a kernel length (a typo, not an experiment)
MAX_KERNEL = 2**16


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


@dataclass
class ConvConfig:
    """``[model.conv]``: the conv layer's settings."""

    kernel: int = 5
    #: the conv output adds to the residual stream (true) or replaces it (false, the original
    #: Conv-Attn: embedding -> conv -> attention -> unembedding)
    residual: bool = True
    #: "causal" (left padding), or "same" (leaks the future: only to show the guard catching it)
    padding: str = "causal"

    def validate(self, key: str, model) -> None:
        if not 1 <= self.kernel <= MAX_KERNEL:
            raise ConfigError(f"{key}.kernel must be in [1, {MAX_KERNEL}], got {self.kernel}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"{key}.padding must be one of {', '.join(PADDINGS)}, got '{self.padding}'")

    def approx_params(self, model) -> int:
        return model.d_model * (self.kernel + 1)


class ConvMixer(Mixer):
    """A depthwise causal conv used as a layer of its own (``blocks.{l}.conv``, no MLP after it)."""

    scope = "conv"
    Config = ConvConfig
    config_name = "conv"

    def __init__(self, cfg, name: str, settings: ConvConfig):
        super().__init__()
        self.name = name
        self.replaces_residual = not settings.residual
        self.conv = CausalDepthwiseConv(cfg.d_model, settings.kernel, settings.padding,
                                        init_identity=not settings.residual)

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[batch, pos, d_model]`` -> ``[batch, pos, d_model]`` (``pos`` is not used)."""
        return run(ctx, f"{self.name}.hook_out", self.conv(x))

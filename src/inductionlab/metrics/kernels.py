"""Learned position mixing: conv-kernel profiles and smeared-key weights."""

from __future__ import annotations

import torch

from ..models.conv import ConvMixer


def kernel_profile(kernel_by_offset: torch.Tensor) -> torch.Tensor:
    """``[k]``: a ``[channels, k]`` kernel (column ``i`` = offset ``t - i``) averaged over channels,
    sign kept. Offset 0 (the current token) comes first."""
    return kernel_by_offset.float().mean(0)


@torch.no_grad()
def conv_kernel_profiles(model) -> dict[int, torch.Tensor]:
    """``{layer: [k]}`` for every conv layer (``blocks.{l}.conv.conv``)."""
    return {i: kernel_profile(b.mixer.conv.kernel_by_offset())
            for i, b in enumerate(model.blocks) if isinstance(b.mixer, ConvMixer)}


@torch.no_grad()
def smear_sigmas(model) -> dict[int, torch.Tensor]:
    """``{layer: [head]}`` sigma(alpha) for every smeared attention layer (1 = key of its own
    position only, 0 = key of the previous position only)."""
    return {layer: attn.smear_weight().float() for layer, attn in model.attention_layers
            if getattr(attn, "smear", False)}

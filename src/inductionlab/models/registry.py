"""Named architectures and layer kinds. A new mixer is one file plus one line in LAYER_KINDS."""

from __future__ import annotations

from functools import partial

from .attention import Attention
from .conv import ConvMixer

#: layer kind -> constructor ``(model_cfg, name) -> nn.Module`` (``forward(x, ctx, qk_input=None)``)
LAYER_KINDS = {
    "attn": Attention,
    "smeared": partial(Attention, smear=True),
    "conv": ConvMixer,
}

#: architecture -> (layer list, description)
ARCHITECTURES: dict[str, tuple[list[str], str]] = {
    "attn-only-1l": (["attn"], "one attention layer"),
    "attn-only-2l": (["attn", "attn"], "two attention layers"),
    "attn-attn": (["attn"] * 4, "four attention layers (the Attn-Attn text baseline)"),
    "conv-attn": (["conv", "attn"], "depthwise causal conv, then one attention layer"),
    "smeared-1l": (["smeared"], "one attention layer with smeared keys"),
    "smeared-2l": (["smeared", "smeared"], "two attention layers with smeared keys"),
}


def layer_list(cfg) -> list[str]:
    return list(cfg.layers) if cfg.layers else list(ARCHITECTURES[cfg.arch][0])

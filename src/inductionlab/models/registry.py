"""Layer kinds (mixers) and named architectures.

A layer kind is a name in :data:`LAYER_KINDS` or an import path ``"module:Class"`` written
straight into ``model.layers`` (``layers = ["attn", "mypkg.mixers:MyMixer"]``): either way it
resolves to a class following the mixer protocol of ``models/mixer.py``. A new mixer is one file
plus one line in :data:`LAYER_KINDS` (or none, named by its import path); its settings dataclass
lives in its file and is read from ``[model.<config_name>]``.

This module imports no mixer: entries are import paths, resolved (and cached by Python's import
system) on first use, so ``config.py`` can import it without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..errors import ConfigError
from .mixer import MixerSpec, is_settings_class

#: layer kind -> ``"module:Class"`` of its mixer (models/mixer.py)
LAYER_KINDS: dict[str, str] = {
    "attn": "inductionlab.models.attention:Attention",
    "smeared": "inductionlab.models.attention:SmearedAttention",
    "conv": "inductionlab.models.conv:ConvMixer",
    "linear": "inductionlab.models.linear_attention:LinearAttention",
}

#: architecture -> (layer list, description)
ARCHITECTURES: dict[str, tuple[list[str], str]] = {
    "attn-only-1l": (["attn"], "one attention layer"),
    "attn-only-2l": (["attn", "attn"], "two attention layers"),
    "attn-attn": (["attn"] * 4, "four attention layers (the Attn-Attn text baseline)"),
    "conv-attn": (["conv", "attn"], "depthwise causal conv, then one attention layer"),
    "smeared-1l": (["smeared"], "one attention layer with smeared keys"),
    "smeared-2l": (["smeared", "smeared"], "two attention layers with smeared keys"),
    "linear-1l": (["linear"], "one causal linear-attention layer"),
    "linear-2l": (["linear", "linear"], "two causal linear-attention layers"),
}

#: flat ``[model]`` keys of earlier versions -> the ``table.key`` they now set (saved config.toml
#: files and ``--set`` use them); ``conv_padding`` padded both the conv layer and the Q/K/V convs
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "conv_kernel": ("conv.kernel",),
    "conv_residual": ("conv.residual",),
    "conv_padding": ("conv.padding", "attn.qkv_padding"),
    "qkv_conv": ("attn.qkv_conv",),
    "smear_init": ("attn.smear_init",),
}

#: names a mixer's scope may not take: the block's own attributes
RESERVED_SCOPES = frozenset({"ln1", "ln2", "mlp", "kind", "name", "scope", "mixer", "residual",
                             "per_head_attention"})


def _import(kind: str, path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # any failure of a user's module is a config problem, on one line
        raise ConfigError(f"layer kind '{kind}': cannot import module '{module_name}' "
                          f"({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"layer kind '{kind}': module '{module_name}' has no '{attr}'") from None
    return obj


def mixer_spec(kind: str) -> MixerSpec:
    """The mixer of layer kind ``kind`` (a :data:`LAYER_KINDS` name or ``"module:Class"``), checked
    against the protocol; :class:`ConfigError` (one line) if it is unknown, unimportable or broken."""
    if not isinstance(kind, str):
        raise ConfigError(f"layer kind {kind!r} must be a string")
    path = LAYER_KINDS.get(kind)
    if path is None:
        module_name, colon, attr = kind.partition(":")
        if not (colon and module_name.strip() and attr.strip()):
            raise ConfigError(f"unknown layer kind '{kind}' in model.layers (known: {', '.join(LAYER_KINDS)}; "
                              "or a mixer class by import path, 'module:Class')")
        path = kind
    cls = _import(kind, path)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"layer kind '{kind}' is not an nn.Module class (models/mixer.py describes a mixer)")
    spec = MixerSpec.of(kind, cls)
    if not (isinstance(spec.scope, str) and spec.scope.isidentifier() and spec.scope not in RESERVED_SCOPES
            and not hasattr(nn.Module, spec.scope)):
        raise ConfigError(f"layer kind '{kind}': scope {spec.scope!r} must be an identifier other than "
                          f"{', '.join(sorted(RESERVED_SCOPES))} and nn.Module's attributes")
    if spec.per_head_attention and spec.scope != "attn":
        raise ConfigError(f"layer kind '{kind}': a per-head attention mixer must use scope 'attn', "
                          f"not {spec.scope!r} (the head metrics read blocks.{{l}}.attn)")
    if spec.config_cls is not None:
        if not is_settings_class(spec.config_cls):
            raise ConfigError(f"layer kind '{kind}': its Config must be a dataclass")
        if not (isinstance(spec.config_name, str) and spec.config_name):
            raise ConfigError(f"layer kind '{kind}': its config_name must be a non-empty string")
    return spec


def layer_list(cfg) -> list[str]:
    """The layer kinds of model config ``cfg``: ``cfg.layers``, else those of ``cfg.arch``."""
    return list(cfg.layers) if cfg.layers else list(ARCHITECTURES[cfg.arch][0])


def default_settings(kinds: list[str]) -> dict[str, Any]:
    """``{config_name: Config()}`` for every built-in kind and for each of ``kinds`` that has
    settings, in that order (kinds sharing a table share its class)."""
    out: dict[str, Any] = {}
    owner: dict[str, MixerSpec] = {}
    for kind in [*LAYER_KINDS, *kinds]:
        spec = mixer_spec(kind)
        if spec.config_cls is None:
            continue
        first = owner.setdefault(spec.config_name, spec)
        if first.config_cls is not spec.config_cls:
            raise ConfigError(f"layer kind '{kind}': its settings table [model.{spec.config_name}] is already "
                              f"that of layer kind '{first.kind}' (set another config_name)")
        if spec.config_name not in out:
            out[spec.config_name] = spec.config_cls()
    return out

"""The mixer protocol: what one layer of the residual stream (``blocks.{l}``) must provide.

Every block is ``x + mixer(ln1(x), ctx, pos)`` (or ``mixer(...)`` alone when the mixer replaces
the stream), then ``x + mlp(ln2(x))`` if the mixer wants an MLP after it and ``model.mlp`` is on.
:class:`~inductionlab.models.transformer.Block` reads nothing but this protocol, so a new mixer
is one file plus one line in ``registry.LAYER_KINDS`` -- or no line at all: a config may name
any mixer class by its import path, ``layers = ["attn", "mypkg.mixers:MyMixer"]``.

A mixer is an ``nn.Module`` class with

``__init__(cfg: ModelConfig, name: str, settings)``
    ``name`` is its hook prefix ``blocks.{l}.{scope}``; ``settings`` is its ``Config`` instance
    as read from ``[model.<config_name>]`` (``None`` when it has no ``Config``).
``forward(x, ctx=None, pos=None) -> [batch, pos, d_model]``
    ``x [batch, pos, d_model]`` is ``ln1`` of the residual stream; ``ctx`` the
    :class:`~inductionlab.models.hooks.HookContext` or ``None`` (name every activation it
    exposes ``f"{name}.hook_..."`` and pass it through ``hooks.run``); ``pos [pos, d_model]``
    is the shortformer position table or ``None`` (attention adds it to its query/key input
    only; other mixers may ignore it). It must be causal: ``train`` refuses a model whose logits
    at position t move when later tokens change (``causality.py``).

and these class attributes (the defaults of :class:`Mixer`; a mixer need not inherit from it):

``scope = "sequence_mixer"``
    the module is stored as ``blocks.{l}.{scope}``, so its parameters are
    ``blocks.{l}.{scope}.W_Q`` etc. and its hooks ``blocks.{l}.{scope}.hook_...``
    (TransformerLens names for ``attn``; the default is Zoology's attribute name). An identifier
    other than the block's own attributes (``ln1``, ``ln2``, ``mlp``, ``mixer``, ...).
``Config = None``, ``config_name = None``
    a dataclass of its settings, read from the TOML table ``[model.<config_name>]`` (default
    name: the layer kind as written in ``model.layers``, so ``[model."mypkg.mixers:MyMixer"]``)
    and overridable as ``--set model.<config_name>.<key>=...``. Its defaults are what an absent
    table gives. Optional methods: ``validate(key: str, model: ModelConfig)`` raising
    :class:`~inductionlab.errors.ConfigError` (``key`` is ``"model.<config_name>"``), and
    ``approx_params(model) -> int`` (extra parameters per layer, for the config's size check).
    Kinds may share a table if they share the class (``attn`` and ``smeared`` share
    ``[model.attn]``).
``per_head_attention = False``
    True for a per-head, softmax-style attention that the head metrics (copying, composition,
    ablation, attention patterns, TransformerLens cross-checks) may read: it must use scope
    ``attn``, hold ``n_heads``, ``d_head`` and ``W_Q, W_K, W_V [n_heads, d_model, d_head]``,
    ``W_O [n_heads, d_head, d_model]``, ``b_Q, b_K, b_V [n_heads, d_head]``, ``b_O [d_model]``,
    and, when a context asks for them, expose ``hook_pattern [batch, head, query, key]``
    (rows sum to 1, zero above the diagonal), ``hook_z [batch, pos, head, d_head]`` and
    ``hook_result [batch, pos, head, d_model]``, with replacements of them taking effect.
    ``Transformer.attention_layers`` lists exactly these layers.
``mlp_after = False``
    whether an MLP follows the mixer when ``model.mlp`` is on.

and the instance attribute ``replaces_residual`` (default False): the block's output is the
mixer's output instead of ``x + output`` (the original Conv-Attn's conv, ``[model.conv]
residual = false``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import ConfigError


class Mixer(nn.Module):
    """The protocol's defaults (see the module docstring); inheriting from it is optional."""

    scope: ClassVar[str] = "sequence_mixer"
    Config: ClassVar[type | None] = None
    config_name: ClassVar[str | None] = None
    per_head_attention: ClassVar[bool] = False
    mlp_after: ClassVar[bool] = False
    replaces_residual: bool = False


@dataclass(frozen=True)
class MixerSpec:
    """A layer kind resolved to its class and protocol attributes (``registry.mixer_spec``)."""

    kind: str  # as written in model.layers: "attn", or "mypkg.mixers:MyMixer"
    cls: type
    scope: str
    config_name: str | None  # None: the mixer has no settings
    config_cls: type | None
    per_head_attention: bool
    mlp_after: bool

    @classmethod
    def of(cls, kind: str, mixer_cls: type) -> "MixerSpec":
        config_cls = getattr(mixer_cls, "Config", None)
        return cls(kind=kind, cls=mixer_cls, scope=getattr(mixer_cls, "scope", Mixer.scope),
                   config_name=(getattr(mixer_cls, "config_name", None) or kind) if config_cls else None,
                   config_cls=config_cls, per_head_attention=bool(getattr(mixer_cls, "per_head_attention", False)),
                   mlp_after=bool(getattr(mixer_cls, "mlp_after", False)))

    def settings(self, model_cfg: Any) -> Any:
        """This mixer's settings in ``model_cfg`` (defaults when the config has no table for it)."""
        if self.config_cls is None:
            return None
        found = getattr(model_cfg, "mixers", {}).get(self.config_name)
        return found if found is not None else self.config_cls()

    def build(self, model_cfg: Any, block_name: str) -> nn.Module:
        """The mixer of block ``block_name`` (``blocks.{l}``), hook prefix ``blocks.{l}.{scope}``."""
        settings = self.settings(model_cfg)
        try:
            return self.cls(model_cfg, f"{block_name}.{self.scope}", settings)
        except TypeError as exc:  # e.g. torch.nn:Linear named as a mixer: not the protocol's constructor
            if self.cls.__module__.startswith("inductionlab."):  # a built-in's bug, not bad input
                raise
            raise ConfigError(f"layer kind '{self.kind}' cannot be built as a mixer ({exc}); its constructor "
                              "must be __init__(cfg, name, settings) (models/mixer.py)") from None


def is_settings_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)

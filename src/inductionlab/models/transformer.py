"""One ``Transformer`` built from a list of layers over a residual stream.

Embedding ``W_E[d_vocab, d_model]`` -> (positions) -> blocks -> (final LayerNorm) ->
unembedding ``W_U[d_model, d_vocab]``. Each block is ``x + mixer(ln(x))`` (or ``mixer(ln(x))``
alone for a mixer that replaces the stream, e.g. a conv layer with ``[model.conv] residual =
false``), followed by ``x + mlp(ln(x))`` after mixers that want one (attention) when ``mlp`` is on.
Blocks know mixers only through the protocol of ``models/mixer.py``. ``forward(tokens)`` is a
plain function of parameters and tokens, so ``torch.func.functional_call``/``vmap`` and DDP can
wrap the model unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from .hooks import Hook, HookContext, run
from .init import apply_init
from .registry import layer_list, mixer_spec

if TYPE_CHECKING:  # config.py imports the registry: no import of config at run time
    from ..config import ModelConfig


def sinusoidal_table(n_ctx: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, name: str):
        super().__init__()
        self.name = name
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.mlp_dim) * cfg.init_std)
        self.b_in = nn.Parameter(torch.zeros(cfg.mlp_dim))
        self.W_out = nn.Parameter(torch.randn(cfg.mlp_dim, cfg.d_model) * cfg.init_std)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x, ctx=None):
        post = run(ctx, f"{self.name}.hook_post", torch.nn.functional.gelu(x @ self.W_in + self.b_in))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    """``blocks.{index}``: the mixer of layer kind ``kind`` (stored as ``blocks.{index}.{scope}``:
    ``attn``, ``conv``, ...), its LayerNorm and, if the mixer wants one and ``cfg.mlp``, an MLP."""

    def __init__(self, cfg: ModelConfig, kind: str, index: int):
        super().__init__()
        spec = mixer_spec(kind)
        self.kind = kind
        self.name = f"blocks.{index}"
        self.scope = spec.scope
        #: whether the head metrics may read this layer (``Transformer.attention_layers``)
        self.per_head_attention = spec.per_head_attention
        setattr(self, spec.scope, spec.build(cfg, self.name))  # TransformerLens names: blocks.{l}.attn.W_Q
        self.residual = not getattr(self.mixer, "replaces_residual", False)
        self.ln1 = nn.LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.mlp = MLP(cfg, f"{self.name}.mlp") if (cfg.mlp and spec.mlp_after) else None
        self.ln2 = nn.LayerNorm(cfg.d_model) if (cfg.layernorm and self.mlp is not None) else nn.Identity()

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self.scope)

    def forward(self, x: torch.Tensor, ctx: HookContext | None = None, pos: torch.Tensor | None = None):
        """x ``[batch, pos, d_model]`` (the residual stream) -> same shape; ``pos [pos, d_model]``
        are shortformer positions (mixers that attend add them to their query/key input)."""
        x = run(ctx, f"{self.name}.hook_resid_pre", x)
        out = self.mixer(self.ln1(x), ctx, pos)
        x = x + out if self.residual else out
        if self.mlp is not None:
            x = x + run(ctx, f"{self.name}.hook_mlp_out", self.mlp(self.ln2(x), ctx))
        return run(ctx, f"{self.name}.hook_resid_post", x)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, v = cfg.d_model, cfg.vocab_size
        self.layer_kinds = layer_list(cfg)
        self.W_E = nn.Parameter(torch.randn(v, d) * cfg.init_std)
        if cfg.positions in ("learned", "shortformer"):
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, d) * cfg.init_std)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("W_pos", sinusoidal_table(cfg.n_ctx, d), persistent=False)
        else:
            self.W_pos = None
        self.blocks = nn.ModuleList(Block(cfg, kind, i) for i, kind in enumerate(self.layer_kinds))
        self.ln_final = nn.LayerNorm(d) if (cfg.layernorm and cfg.final_ln) else nn.Identity()
        self.W_U = nn.Parameter(torch.randn(d, v) * cfg.init_std)
        self.b_U = nn.Parameter(torch.zeros(v))

    # ----------------------------------------------------------------- helpers
    @property
    def attention_layers(self) -> list[tuple[int, nn.Module]]:
        """``(layer index, mixer)`` for every layer whose mixer declares itself per-head attention
        (``blocks.{l}.attn`` with TransformerLens-layout weights: models/mixer.py)."""
        return [(i, b.mixer) for i, b in enumerate(self.blocks) if b.per_head_attention]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, ctx: HookContext | None = None) -> torch.Tensor:
        """tokens ``[batch, pos]`` -> logits ``[batch, pos, d_vocab]``."""
        t = tokens.shape[1]
        if t > self.cfg.n_ctx and self.W_pos is not None:
            raise ValueError(f"sequence length {t} exceeds the model context n_ctx={self.cfg.n_ctx} "
                             f"({self.cfg.positions} positions cannot extrapolate)")
        x = run(ctx, "hook_embed", torch.nn.functional.embedding(tokens, self.W_E))
        pos = None
        if self.W_pos is not None:
            p = run(ctx, "hook_pos_embed", self.W_pos[:t])
            if self.cfg.positions == "shortformer":
                pos = p  # added to the query/key input of every attention layer only
            else:
                x = x + p
        for block in self.blocks:
            x = block(x, ctx, pos)
        x = self.ln_final(x)
        return x @ self.W_U + self.b_U

    def run_with_cache(self, tokens: torch.Tensor, names: Iterable[str] | None = None,
                       hooks: dict[str, Hook] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the activations named in ``names`` (all of them if ``names`` is None)."""
        ctx = HookContext(names, hooks, cache_all=names is None)
        logits = self(tokens, ctx)
        return logits, ctx.cache

    def run_with_hooks(self, tokens: torch.Tensor, hooks: dict[str, Hook]) -> torch.Tensor:
        return self(tokens, HookContext(hooks=hooks))

    def patterns(self, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{layer: pattern[batch, head, query, key]}`` for every attention layer."""
        names = [f"blocks.{i}.attn.hook_pattern" for i, _ in self.attention_layers]
        _, cache = self.run_with_cache(tokens, names)
        return {i: cache[f"blocks.{i}.attn.hook_pattern"] for i, _ in self.attention_layers}


def build_model(cfg: ModelConfig) -> Transformer:
    """The model of ``cfg`` with weights drawn under ``cfg.init`` (models/init.py)."""
    model = Transformer(cfg)
    apply_init(model, cfg.init, cfg.d_model)
    return model

"""A tiny hook context: named activations can be read (cache) or replaced (hooks).

Names follow TransformerLens: ``blocks.{l}.attn.hook_pattern`` ``[batch, head, query, key]``,
``blocks.{l}.attn.hook_z`` ``[batch, pos, head, d_head]``, ``blocks.{l}.hook_resid_post``, ...
Nothing is stored or computed for names nobody asked for, so the training path stays fast.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

Hook = Callable[[torch.Tensor], torch.Tensor]


class HookContext:
    """Carries the requested cache names and replacement hooks through one forward pass."""

    def __init__(self, names: Iterable[str] | None = None, hooks: dict[str, Hook] | None = None,
                 cache_all: bool = False):
        self.names = set(names or ())
        self.hooks = dict(hooks or {})
        self.cache_all = cache_all
        self.cache: dict[str, torch.Tensor] = {}

    def wants(self, name: str) -> bool:
        return self.cache_all or name in self.names or name in self.hooks

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        hook = self.hooks.get(name)
        if hook is not None:
            x = hook(x)
        if self.cache_all or name in self.names:
            self.cache[name] = x
        return x


def run(ctx: HookContext | None, name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply the context to ``x`` under ``name`` (no-op when there is no context)."""
    return x if ctx is None else ctx(name, x)

"""Per-head ablations through ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``).

* **zero**: the head's ``z`` is set to 0.
* **mean**: the head's ``z`` is replaced by its clean mean over the batch, per position.
* **pattern_preserving**: every attention layer's ``hook_pattern`` is replaced by the pattern
  recorded on the clean run, and the head's ``z`` is zeroed. Later heads therefore still attend
  where they did; only the ablated head's *output* (direct path and values of later heads) goes.

Each ablation reports the change (ablated - clean) of induction loss, induction accuracy and
ICL score (``icl.py``) over the given tokens.
"""

from __future__ import annotations

import torch

from .icl import icl_indices, icl_score_from_curve
from .induction import induction_accuracy, induction_loss, loss_by_position

KINDS = ("zero", "mean", "pattern_preserving")


def _z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _fixed(t: torch.Tensor):
    return lambda _: t


def scores(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, icl: tuple[int, int]) -> dict[str, float]:
    """``{"induction_loss", "induction_accuracy", "icl_score"}`` of one forward pass."""
    return {"induction_loss": float(induction_loss(logits, tokens, mask)),
            "induction_accuracy": float(induction_accuracy(logits, tokens, mask)),
            "icl_score": icl_score_from_curve(loss_by_position(logits, tokens), *icl)}


def _chunk_scores(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, icl: tuple[int, int],
                  chunks: int) -> list[dict[str, float]]:
    b = tokens.shape[0]
    return [scores(logits[c * b:(c + 1) * b], tokens, mask, icl) for c in range(chunks)]


def _ablation_hooks(layers, cache: dict, groups: list[list[tuple[int, int]]], kind: str, batch: int,
                    device) -> dict:
    """Hooks for a batch repeated once per group: chunk ``c`` has every head of ``groups[c]``
    ablated (``kind``: zero / mean / pattern_preserving), all other heads untouched."""
    if kind not in KINDS:
        raise ValueError(f"unknown ablation {kind!r}; choose from {KINDS}")
    n = len(groups)
    hooks = {}
    for layer, attn in layers:
        keep = torch.ones(n, 1, 1, attn.n_heads, 1, device=device)
        for c, group in enumerate(groups):
            for lc, h in group:
                if lc == layer:
                    keep[c, 0, 0, h] = 0
        keep = keep.expand(n, batch, 1, attn.n_heads, 1).reshape(n * batch, 1, attn.n_heads, 1)
        if kind == "mean":
            value = cache[_z_name(layer)].mean(0, keepdim=True)  # [1, pos, head, d_head]
        else:
            value = torch.zeros((), device=device)
        hooks[_z_name(layer)] = _mix(keep, value)
        if kind == "pattern_preserving":
            hooks[_pattern_name(layer)] = _fixed(cache[_pattern_name(layer)].repeat(n, 1, 1, 1))
    return hooks


def _clean_run(model, tokens: torch.Tensor):
    layers = model.attention_layers
    names = [_pattern_name(layer) for layer, _ in layers] + [_z_name(layer) for layer, _ in layers]
    logits, cache = model.run_with_cache(tokens, names)
    return layers, logits, cache


@torch.no_grad()
def head_ablation(model, tokens: torch.Tensor, mask: torch.Tensor, kinds=KINDS,
                  icl: tuple[int, int] | None = None) -> dict:
    """``{"heads": ["L0H0", ...], "clean": scores, kind: {metric: [delta per head]}}``.

    All heads of one ablation kind run in a single forward pass: the batch is repeated once per
    head and chunk ``c`` has head ``c`` ablated (the same numbers as one pass per head)."""
    was_training = model.training
    model.eval()
    icl = icl or icl_indices(tokens.shape[1])
    layers, logits, cache = _clean_run(model, tokens)
    clean = scores(logits, tokens, mask, icl)
    heads = [(layer, h) for layer, attn in layers for h in range(attn.n_heads)]
    n, b = len(heads), tokens.shape[0]
    out: dict = {"heads": [f"L{layer}H{h}" for layer, h in heads], "clean": clean}
    big = tokens.repeat(n, 1)
    for kind in kinds:
        hooks = _ablation_hooks(layers, cache, [[hd] for hd in heads], kind, b, tokens.device)
        per = _chunk_scores(model.run_with_hooks(big, hooks), tokens, mask, icl, n)
        out[kind] = {k: [s[k] - clean[k] for s in per] for k in clean}
    if was_training:
        model.train()
    return out


def _mix(keep: torch.Tensor, value: torch.Tensor):
    return lambda z: z * keep + (1 - keep) * value


@torch.no_grad()
def ablate_heads(model, tokens: torch.Tensor, mask: torch.Tensor, heads: list[tuple[int, int]],
                 kind: str = "pattern_preserving", icl: tuple[int, int] | None = None) -> dict[str, float]:
    """Scores (not deltas) with all ``heads`` ``[(layer, head), ...]`` ablated *together*."""
    was_training = model.training
    model.eval()
    icl = icl or icl_indices(tokens.shape[1])
    layers, _, cache = _clean_run(model, tokens)
    hooks = _ablation_hooks(layers, cache, [list(heads)], kind, tokens.shape[0], tokens.device)
    s = scores(model.run_with_hooks(tokens, hooks), tokens, mask, icl)
    if was_training:
        model.train()
    return s

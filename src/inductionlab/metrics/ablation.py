"""Per-head ablations through ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``).

* **zero**: the head's ``z`` is set to 0.
* **mean**: the head's ``z`` is replaced by its clean mean over the batch, per position
  (:func:`ablation_study`: over all the sequences it is given, however they are chunked).
* **pattern_preserving**: every attention layer's ``hook_pattern`` is replaced by the pattern
  recorded on the clean run, and the head's ``z`` is zeroed. Later heads therefore still attend
  where they did; only the ablated head's *output* (direct path and values of later heads) goes.

Each ablation reports the change (ablated - clean) of induction loss, induction accuracy and
ICL score (``icl.py``) over the given tokens.

:func:`head_ablation` and :func:`ablate_heads` are the cheap point estimates of the measurement
suite. :func:`ablation_study` is the version with error bars: on many held-out sequences, in
chunks, it ablates every head and every named *group* of heads and reports the mean per-sequence
change with a seeded percentile-bootstrap confidence interval. :func:`classify_heads` and
:func:`role_groups` name the groups from the per-head scores (``heads.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.mode import eval_mode
from ..errors import UserError
from .heads import prefix_matching_sums, previous_token_score
from .icl import icl_indices, icl_score_from_curve
from .induction import token_correct, token_losses

KINDS = ("zero", "mean", "pattern_preserving")
#: ``(layer, head)``
Head = tuple[int, int]


def _z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


class AblationError(UserError, ValueError):
    """Inputs the ablation study cannot use (one-line message; the CLI prints it)."""


def _fixed(t: torch.Tensor):
    return lambda _: t


def _masked_totals(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                   losses: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({"induction_accuracy", "induction_loss"}: per-sequence sums over the masked predictions
    [batch], masked predictions per sequence [batch])``; ``losses``: :func:`induction.token_losses`
    when already computed."""
    m = mask.to(torch.float32)
    if losses is None:
        losses = token_losses(logits, tokens)
    return ({"induction_accuracy": (token_correct(logits, tokens).float() * m).sum(1),
             "induction_loss": (losses * m).sum(1)}, m.sum(1))


def scores(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, icl: tuple[int, int]) -> dict[str, float]:
    """``{"induction_loss", "induction_accuracy", "icl_score"}`` of one forward pass: induction
    loss and accuracy over all masked predictions of the batch together (each prediction weighs
    the same, as :func:`induction.induction_loss`), the ICL score of the mean loss by position."""
    losses = token_losses(logits, tokens)
    totals, count = _masked_totals(logits, tokens, mask, losses)
    n = count.sum().clamp_min(1)
    return {"induction_loss": float(totals["induction_loss"].sum() / n),
            "induction_accuracy": float(totals["induction_accuracy"].sum() / n),
            "icl_score": icl_score_from_curve(losses.mean(0), *icl)}


def _chunk_scores(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, icl: tuple[int, int],
                  chunks: int) -> list[dict[str, float]]:
    b = tokens.shape[0]
    return [scores(logits[c * b:(c + 1) * b], tokens, mask, icl) for c in range(chunks)]


def _ablation_hooks(layers, cache: dict, groups: list[list[tuple[int, int]]], kind: str, batch: int,
                    device, means: Mapping[int, torch.Tensor] | None = None) -> dict:
    """Hooks for a batch repeated once per group: chunk ``c`` has every head of ``groups[c]``
    ablated (``kind``: zero / mean / pattern_preserving), all other heads untouched. Mean
    ablation uses ``means[layer]`` (``[1, pos, head, d_head]``) when given, else the mean of
    ``cache``'s z over this batch."""
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
        if kind == "mean" and means is not None:
            value = means[layer]
        elif kind == "mean":
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
    with eval_mode(model):
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
    return out


def _mix(keep: torch.Tensor, value: torch.Tensor):
    return lambda z: z * keep + (1 - keep) * value


@torch.no_grad()
def ablate_heads(model, tokens: torch.Tensor, mask: torch.Tensor, heads: list[tuple[int, int]],
                 kind: str = "pattern_preserving", icl: tuple[int, int] | None = None) -> dict[str, float]:
    """Scores (not deltas) with all ``heads`` ``[(layer, head), ...]`` ablated *together*."""
    icl = icl or icl_indices(tokens.shape[1])
    with eval_mode(model):
        layers, _, cache = _clean_run(model, tokens)
        hooks = _ablation_hooks(layers, cache, [list(heads)], kind, tokens.shape[0], tokens.device)
        return scores(model.run_with_hooks(tokens, hooks), tokens, mask, icl)


# --------------------------------------------------------------------------- head roles
#: a head is a *previous-token head* if its previous-token score (mean attention
#: from each query to the position just before it, ``heads.py``) is at least this. A uniform
#: causal head scores 1/(q+1) at query q (< 0.1 past the tenth token); 0.4 asks for a large
#: share of the head's attention on the previous token but not the majority, because the role
#: is often split between heads that also attend two tokens back.
PREVIOUS_TOKEN_THRESHOLD = 0.4
#: a head that is neither an induction nor a previous-token head is a *current-token head* if its
#: current-token score (mean attention of each query on itself, :func:`current_token_score`) is
#: at least this (same reasoning as above).
CURRENT_TOKEN_THRESHOLD = 0.4
#: a head is an *induction head* if its prefix-matching score (attention on the
#: successors of earlier occurrences of the query's token) is at least this: the majority of
#: its attention, from the second copy on, goes where an induction head looks (not in the first
#: attention layer of a model with several, see :func:`classify_heads`).
INDUCTION_THRESHOLD = 0.5
ROLES = ("previous_token", "current_token", "induction", "other")
#: :func:`classify_heads`'s rule in one line (for printing beside a study)
ROLE_RULE = (f"induction if prefix-matching score >= {INDUCTION_THRESHOLD} (not in the first attention layer "
             f"of a model with several), else previous_token if previous-token score >= "
             f"{PREVIOUS_TOKEN_THRESHOLD}, else current_token if current-token score >= "
             f"{CURRENT_TOKEN_THRESHOLD}; otherwise other")


def current_token_score(pattern: torch.Tensor, bos: bool = True) -> torch.Tensor:
    """``[head]``: mean attention of each query on its own position, over the same queries as
    :func:`heads.previous_token_score` (``q >= 2`` with BOS, ``q >= 1`` without); ``pattern``
    ``[batch, head, query, key]``."""
    first = 2 if bos else 1
    q = torch.arange(first, pattern.shape[-1], device=pattern.device)
    return pattern[:, :, q, q].float().mean(dim=(0, 2))


def classify_heads(previous_token: Mapping[int, Sequence[float] | torch.Tensor],
                   prefix_matching: Mapping[int, Sequence[float] | torch.Tensor],
                   current_token: Mapping[int, Sequence[float] | torch.Tensor] | None = None,
                   previous_threshold: float = PREVIOUS_TOKEN_THRESHOLD,
                   induction_threshold: float = INDUCTION_THRESHOLD,
                   current_threshold: float = CURRENT_TOKEN_THRESHOLD,
                   first_layer_induction: bool | None = None) -> dict[Head, str]:
    """Role of every head, ``{(layer, head): role}``, by its scores (``{layer: [head]}``; the
    attention layers are the keys of ``previous_token``), in this order:

    1. ``"induction"`` when the prefix-matching score is ``>= induction_threshold``, in every
       attention layer but the first of a model with two or more: there a head cannot attend to
       the successor of an earlier occurrence by matching tokens (its keys hold only their own
       token; a high score there is a coincidence of positions), while a model with a *single*
       attention layer can have induction heads only there, because its keys see the previous
       token through something else (the conv of ``conv-attn``, the smeared keys of
       ``smeared-1l``). ``first_layer_induction=True`` allows it in the first layer of a
       multi-layer model too (e.g. smeared keys with several layers), ``False`` forbids it
       even in a single-layer model; ``None`` (default): the rule above.
    2. ``"previous_token"`` when the previous-token score is ``>= previous_threshold``.
    3. ``"current_token"`` when the current-token score is ``>= current_threshold`` (only if
       ``current_token`` is given).
    4. ``"other"``."""
    layers = sorted(int(layer) for layer in previous_token)
    if first_layer_induction is None:
        first_layer_induction = len(layers) == 1
    roles: dict[Head, str] = {}
    for layer in layers:
        prev = [float(x) for x in previous_token[layer]]
        cur = ([float(x) for x in current_token[layer]] if current_token is not None and layer in current_token
               else [float("-inf")] * len(prev))
        pm = ([float(x) for x in prefix_matching[layer]] if layer in prefix_matching
              else [float("-inf")] * len(prev))
        induction_ok = layer != layers[0] or first_layer_induction
        for h, (p, c, i) in enumerate(zip(prev, cur, pm)):
            roles[(layer, h)] = ("induction" if induction_ok and i >= induction_threshold else
                                 "previous_token" if p >= previous_threshold else
                                 "current_token" if c >= current_threshold else "other")
    return roles


def role_groups(roles: Mapping[Head, str]) -> dict[str, list[Head]]:
    """Groups of heads to ablate together: per layer and role, ``"L0 previous_token"``,
    ``"L0 current_token"``, ``"L0 other"``, ``"L1 induction"``, ``"L1 other"``, ... (in that
    order within a layer; empty groups left out; heads in ``(layer, head)`` order)."""
    groups: dict[str, list[Head]] = {}
    for layer in sorted({layer for layer, _ in roles}):
        for role in ROLES:
            members = sorted(hd for hd, r in roles.items() if hd[0] == layer and r == role)
            if members:
                groups[f"L{layer} {role}"] = members
    return groups


@torch.no_grad()
def head_scores(model, tokens: torch.Tensor, periods: torch.Tensor, bos: bool = True,
                batch: int = 64) -> dict[str, dict[int, torch.Tensor]]:
    """``{"previous_token", "current_token", "prefix_matching"}``, each ``{layer: [head]}``, over
    all ``tokens [n, seq]`` (``periods [n]``), in chunks of ``batch`` sequences, equal (to float
    rounding) to the scores of all sequences in one batch: previous- and current-token scores
    average a fixed number of queries per sequence, so their per-chunk means are weighted by the
    chunk's sequence count; the prefix-matching score's queries per sequence depend on its period,
    so its totals and query counts are summed over chunks (:func:`heads.prefix_matching_sums`)."""
    n = tokens.shape[0]
    fns = {"previous_token": previous_token_score, "current_token": current_token_score}
    out: dict[str, dict[int, torch.Tensor]] = {k: {} for k in (*fns, "prefix_matching")}
    totals: dict[int, torch.Tensor] = {}
    counts: dict[int, torch.Tensor] = {}
    for s in range(0, n, batch):
        tk, per = tokens[s:s + batch], periods[s:s + batch]
        w = tk.shape[0] / n
        for layer, p in model.patterns(tk).items():
            for k, fn in fns.items():
                out[k][layer] = out[k].get(layer, 0) + w * fn(p, bos)
            total, count = prefix_matching_sums(p, per, bos)
            totals[layer] = totals.get(layer, 0) + total
            counts[layer] = counts.get(layer, 0) + count
    out["prefix_matching"] = {layer: totals[layer] / counts[layer].clamp_min(1) for layer in totals}
    return out


# --------------------------------------------------------------------------- intervals
STUDY_METRICS = ("induction_accuracy", "induction_loss")


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float

    def as_dict(self, digits: int = 5) -> dict[str, float]:
        return {"mean": round(self.mean, digits), "low": round(self.low, digits), "high": round(self.high, digits)}


def bootstrap_interval(values: torch.Tensor, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """Mean of ``values`` ``[n]`` and its percentile-bootstrap interval: ``resamples`` means of
    ``n`` values drawn with replacement (indices from a ``torch.Generator`` seeded ``seed``; the
    global RNG is untouched), cut at the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles. The same seed gives the same interval."""
    v = values.detach().double().flatten().cpu()
    n = v.numel()
    if n == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    g = torch.Generator().manual_seed(seed)
    block = max(1, 2**22 // n)  # resamples drawn per step: at most ~4M indices in memory
    means = torch.cat([v[torch.randint(0, n, (min(block, resamples - r), n), generator=g)].mean(1)
                       for r in range(0, resamples, block)])
    a = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.double)).tolist()
    return Interval(float(v.mean()), low, high)


def per_sequence_scores(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"induction_accuracy", "induction_loss"}``, each ``[batch]``: the masked means of every
    sequence on its own (``logits [batch, seq, vocab]``, ``tokens [batch, seq]``,
    ``mask [batch, seq-1]``)."""
    totals, count = _masked_totals(logits, tokens, mask)
    count = count.clamp_min(1)
    return {k: t / count for k, t in totals.items()}


# --------------------------------------------------------------------------- the study
def _mean_z(model, tokens: torch.Tensor, batch: int) -> dict[int, torch.Tensor]:
    """``{layer: [1, pos, head, d_head]}``: clean z averaged over all ``tokens`` ``[n, seq]``."""
    n = tokens.shape[0]
    sums: dict[int, torch.Tensor] = {}
    for s in range(0, n, batch):
        _, _, cache = _clean_run(model, tokens[s:s + batch])
        for layer, _ in model.attention_layers:
            z = cache[_z_name(layer)].sum(0, keepdim=True)
            sums[layer] = sums.get(layer, 0) + z
    return {layer: z / n for layer, z in sums.items()}


@torch.no_grad()
def ablation_study(model, tokens: torch.Tensor, mask: torch.Tensor,
                   groups: Mapping[str, Sequence[Head]] | None = None, kinds: Sequence[str] = KINDS,
                   heads: Sequence[Head] | None = None, batch: int = 16, confidence: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every single head and every group of heads ablated, with confidence intervals.

    ``tokens [n, seq]``, ``mask [n, seq-1]`` (induction mask); ``heads``: the heads ablated one
    at a time (default: every head); ``groups``: ``{name: [(layer, head), ...]}`` each ablated
    as a whole (e.g. :func:`role_groups`). For each unit (head or group) and
    kind, every sequence gives ``delta = score(ablated) - score(clean)`` of its own induction
    accuracy and loss (:func:`per_sequence_scores`; each sequence weighs the same); the result
    is the mean delta over the ``n`` sequences and its :func:`bootstrap_interval`.

    Sequences run in chunks of ``batch``; one forward pass holds ``batch * units`` sequences.
    Mean ablation replaces z by its clean mean over *all* ``n`` sequences (per position), so
    the chunking does not change the answer.

    Returns (JSON-serialisable) ``{"sequences": n, "confidence", "resamples", "seed",
    "heads": ["L0H0", ...], "groups": {name: ["L0H1", ...]}, "clean": {metric: interval},
    kind: {unit name: {metric: interval}}}``, an interval being ``{"mean", "low", "high"}``.
    Raises :class:`AblationError` (a ``UserError`` and ``ValueError``) for an unknown kind or
    head, or a sequence without a masked prediction."""
    for kind in kinds:
        if kind not in KINDS:
            raise AblationError(f"unknown ablation {kind!r}; choose from {KINDS}")
    empty = int((mask.sum(1) == 0).sum())
    if empty:
        raise AblationError(f"{empty} of {mask.shape[0]} sequences have no induction prediction to score "
                            "(the context must go at least two tokens into the second copy of the "
                            "repeated block)")
    with eval_mode(model):
        layers = model.attention_layers
        n_heads = {layer: attn.n_heads for layer, attn in layers}
        if heads is None:
            heads = [(layer, h) for layer, attn in layers for h in range(attn.n_heads)]
        named = [(f"L{layer}H{h}", [(layer, h)]) for layer, h in heads] + list((groups or {}).items())
        units: list[tuple[str, list[Head]]] = []
        for name, group in named:
            group = [(int(layer), int(h)) for layer, h in group]
            bad = [hd for hd in group if hd[0] not in n_heads or not 0 <= hd[1] < n_heads[hd[0]]]
            if bad:
                raise AblationError(f"{name!r}: no such head {bad[0]}")
            if group:
                units.append((name, group))
        n, u = tokens.shape[0], len(units)
        means = _mean_z(model, tokens, batch) if "mean" in kinds else None
        clean: dict[str, list[torch.Tensor]] = {k: [] for k in STUDY_METRICS}
        deltas: dict[str, dict[str, list[torch.Tensor]]] = {kind: {k: [] for k in STUDY_METRICS} for kind in kinds}
        for s in range(0, n, batch):
            tk, mk = tokens[s:s + batch], mask[s:s + batch]
            b = tk.shape[0]
            _, logits, cache = _clean_run(model, tk)
            base = per_sequence_scores(logits, tk, mk)
            for k in STUDY_METRICS:
                clean[k].append(base[k])
            big, big_mask = tk.repeat(u, 1), mk.repeat(u, 1)
            for kind in kinds:
                hooks = _ablation_hooks(layers, cache, [g for _, g in units], kind, b, tk.device, means)
                ab = per_sequence_scores(model.run_with_hooks(big, hooks), big, big_mask)
                for k in STUDY_METRICS:
                    deltas[kind][k].append(ab[k].view(u, b) - base[k][None])  # [unit, b]

    def interval(values: torch.Tensor) -> dict[str, float]:
        return bootstrap_interval(values, confidence, resamples, seed).as_dict()

    out: dict[str, Any] = {
        "sequences": n, "confidence": confidence, "resamples": resamples, "seed": seed,
        "heads": [f"L{layer}H{h}" for layer, h in heads],
        "groups": {name: [f"L{layer}H{h}" for layer, h in g] for name, g in units[len(heads):]},
        "clean": {k: interval(torch.cat(v)) for k, v in clean.items()},
    }
    for kind in kinds:
        cat = {k: torch.cat(v, 1) for k, v in deltas[kind].items()}  # [unit, n]
        out[kind] = {name: {k: interval(cat[k][i]) for k in STUDY_METRICS} for i, (name, _) in enumerate(units)}
    return out


def _fmt_interval(iv: Mapping[str, float], digits: int, sign: bool = True) -> str:
    f = f"{'+' if sign else ''}.{digits}f"
    return f"{iv['mean']:{f}} [{iv['low']:{f}}, {iv['high']:{f}}]"


def format_ablation_study(study: Mapping[str, Any], roles: Mapping[str, str] | None = None,
                          digits: int = 3) -> str:
    """Text tables of an :func:`ablation_study` result: one per metric, a row per head or group,
    a column per kind, each cell ``mean [low, high]``. ``roles``: ``{"L0H0": role}`` shown beside
    the heads."""
    kinds = [k for k in KINDS if k in study]
    names = list(study["heads"]) + list(study["groups"])
    label = {name: name + (f" {roles[name]}" if roles and name in roles else "") for name in study["heads"]}
    label.update({name: f"{name} ({'+'.join(members)})" for name, members in study["groups"].items()})
    c = study["clean"]
    lines = [f"{study['sequences']} sequences; mean per-sequence change (ablated - clean), "
             f"{round(100 * study['confidence'])}% percentile-bootstrap interval over sequences "
             f"({study['resamples']} resamples, seed {study['seed']})",
             f"clean: induction_accuracy {_fmt_interval(c['induction_accuracy'], 4, False)}  "
             f"induction_loss {_fmt_interval(c['induction_loss'], 4, False)}"]
    for metric in STUDY_METRICS:
        rows = [[f"delta {metric}", *kinds]]
        rows += [[label[name], *(_fmt_interval(study[k][name][metric], digits) for k in kinds)] for name in names]
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)

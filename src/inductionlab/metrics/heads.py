"""Per-head attention scores from attention patterns ``[batch, head, query, key]``.

Conventions (positions count from 0; with BOS, position 0 is BOS and content index c = pos - 1):

* **previous-token score**: mean over query positions ``q >= first`` of ``pattern[q, q-1]``,
  where ``first = 2`` with BOS (so the previous token is a real token) and 1 without.
* **prefix-matching score** on ``[BOS] + r + r + ...`` with period ``P``: for every query whose
  content index ``c >= P`` (the second repeat onwards), the total attention paid to the tokens that
  *follow* earlier occurrences of the query's token, i.e. to content indices ``c - kP + 1`` for
  ``k = 1, 2, ...`` (one, two, ... periods back); averaged over those queries. A perfect induction
  head scores 1; a uniform causal head scores about (number of earlier repeats) / (q + 1).
  Chance repeats of a token *inside* ``r`` are ignored (they add a little noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


def _as_4d(pattern: torch.Tensor) -> torch.Tensor:
    if pattern.dim() == 3:  # [head, q, k] -> [1, head, q, k]
        pattern = pattern[None]
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be [batch, head, query, key], got {tuple(pattern.shape)}")
    return pattern


def previous_token_score(pattern: torch.Tensor, bos: bool = True) -> torch.Tensor:
    """``[head]``: mean attention from each query to the position just before it."""
    pattern = _as_4d(pattern)
    first = 2 if bos else 1
    t = pattern.shape[-1]
    q = torch.arange(first, t, device=pattern.device)
    return pattern[:, :, q, q - 1].float().mean(dim=(0, 2))


def prefix_matching_targets(periods: torch.Tensor, seq_len: int, bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets[batch, q, k] bool, valid_queries[batch, q] bool)`` for the prefix-matching score."""
    off = 1 if bos else 0
    dev = periods.device
    pos = torch.arange(seq_len, device=dev)
    c_q = (pos - off)[None, :, None]  # content index of the query
    c_k = (pos - off)[None, None, :]
    p = periods[:, None, None]
    diff = c_q - c_k + 1  # = k*P for a key k periods back (+1: the token after the occurrence)
    targets = (c_k >= 1) & (c_q >= p) & (diff >= p) & (diff % p == 0) & (c_k <= c_q)
    valid = (pos - off)[None, :] >= periods[:, None]
    return targets, valid


def prefix_matching_sums(pattern: torch.Tensor, periods: torch.Tensor, bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total [head], count [head])``: the prefix-matching attention summed over the later-repeat
    queries of the batch, and the number of those queries (the same for every head). Their ratio
    is :func:`prefix_matching_score`; summing both over batches gives the score of all of them
    together (the number of valid queries per sequence depends on its period)."""
    pattern = _as_4d(pattern)
    targets, valid = prefix_matching_targets(periods, pattern.shape[-1], bos)
    per_query = (pattern.float() * targets[:, None].float()).sum(-1)  # [batch, head, q]
    v = valid[:, None].float()
    return (per_query * v).sum(dim=(0, 2)), v.sum(dim=(0, 2)).expand(per_query.shape[1])


def prefix_matching_score(pattern: torch.Tensor, periods: torch.Tensor, bos: bool = True) -> torch.Tensor:
    """``[head]``: mean over later-repeat queries of attention on the successors of earlier occurrences."""
    total, count = prefix_matching_sums(pattern, periods, bos)
    return total / count.clamp_min(1)


def best_head(scores: dict[int, torch.Tensor]) -> tuple[int, int, float]:
    """``(layer, head, score)`` of the highest score over ``{layer: [head]}``."""
    best = max(((layer, h, float(s[h])) for layer, s in scores.items() for h in range(len(s))),
               key=lambda x: x[2], default=(-1, -1, float("nan")))
    return best


def target_attention_score(pattern: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``[head]``: mean over the ``queries[batch, q]`` (bool) of the attention each pays to its
    ``targets[batch, q, k]`` (bool) positions: 1 for a head that attends only there, 0 for one
    that never does. Prefix matching is the special case whose targets are the successors of the
    query token's earlier occurrences; associative recall's targets are the value after the
    earlier occurrence of the query key."""
    pattern = _as_4d(pattern)
    per_query = (pattern.float() * targets[:, None].float()).sum(-1)  # [batch, head, q]
    v = queries[:, None].float()
    return (per_query * v).sum(dim=(0, 2)) / v.sum(dim=(0, 2)).clamp_min(1)


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Probe:
    """Sequences a task measures its pattern-based head scores on. ``tokens[batch, pos]``;
    ``periods[batch]`` for repeated-token probes (prefix matching); ``targets[batch, q, k]`` and
    ``queries[batch, q]`` (bool) for target-attention scores (associative recall)."""

    tokens: torch.Tensor
    bos: bool = True
    periods: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    queries: torch.Tensor | None = None


@dataclass(frozen=True)
class HeadMetric:
    """One per-head score. ``source = "pattern"``: ``fn(pattern[batch, head, q, k], probe) ->
    [head]``, measured by the task at every evaluation on the probe that ``probe`` names (a task
    hands :func:`pattern_head_scores` a dict of them: ``"sequence"``, its own held-out data;
    ``"repeat"``, ``[BOS] + r + r ...``; ``"recall"``, key-value recall sequences). ``source = "weights"``: computed
    from the weights by the measurement suite (metrics/suite.py); ``fn`` is None. ``range`` is
    the score's natural range (the report's colour scale; None = fit to the data). ``best``:
    the record key of the best head (highest score), logged beside the per-layer lists."""

    key: str
    title: str
    source: str = "pattern"
    fn: Callable[[torch.Tensor, Probe], torch.Tensor] | None = None
    probe: str = "repeat"
    range: tuple[float | None, float | None] = (0.0, 1.0)
    best: str | None = None
    description: str = ""


#: every per-head score, by record key: read by the tasks' evaluations, phase detection,
#: ``inductionlab eval``, ``compare`` and the report (a new score = a function + one entry)
HEAD_METRICS: dict[str, HeadMetric] = {}


def register_head_metric(metric: HeadMetric) -> HeadMetric:
    if metric.source not in ("pattern", "weights"):
        raise ValueError(f"head metric {metric.key}: source must be 'pattern' or 'weights'")
    if metric.source == "pattern" and metric.fn is None:
        raise ValueError(f"head metric {metric.key}: a pattern metric needs fn(pattern, probe)")
    HEAD_METRICS[metric.key] = metric
    return metric


register_head_metric(HeadMetric(
    "previous_token", "previous-token", fn=lambda p, pr: previous_token_score(p, pr.bos), probe="sequence",
    best="best_previous_token_head", description="mean attention from each query to the position before it"))
register_head_metric(HeadMetric(
    "prefix_matching", "prefix-matching", fn=lambda p, pr: prefix_matching_score(p, pr.periods, pr.bos),
    best="best_induction_head",
    description="on [BOS] + r + r ..., attention to the tokens after earlier occurrences of the query token"))
register_head_metric(HeadMetric(
    "recall", "associative recall", fn=lambda p, pr: target_attention_score(p, pr.targets, pr.queries),
    probe="recall", best="best_recall_head",
    description="from a query key, attention to the value after that key's earlier occurrence"))
register_head_metric(HeadMetric("copying", "copying", source="weights", range=(-1.0, 1.0),
                                description="(r - c) / (r + c) of the OV circuit's copying ratio r; 0 = chance c"))
register_head_metric(HeadMetric("ov_positivity", "OV positivity", source="weights", range=(None, None),
                                description="sum of eigenvalues / sum of their moduli of W_U W_OV W_E"))
register_head_metric(HeadMetric("smear_sigma", "σ(α) smear", source="weights",
                                description="weight of k_j itself in a smeared key"))


def pattern_head_scores(model, probes: dict[str, Probe], keys: list[str] | None = None,
                        n: int | None = None) -> dict[str, Any]:
    """The pattern-based head scores of ``model``, each on the probe its registry entry names (the
    first ``n`` sequences): ``{key: {"layer": [per head]}, best: record}``. ``keys``: which
    (default: every registered pattern score whose probe is in ``probes``, so a newly registered
    score is logged by every task that offers its probe). A model without attention layers gets
    no scores."""
    out: dict[str, Any] = {}
    pats: dict[str, dict[int, torch.Tensor]] = {}
    if keys is None:
        keys = [k for k, m in HEAD_METRICS.items() if m.source == "pattern" and m.probe in probes]
    for key in keys:
        metric = HEAD_METRICS[key]
        probe = probes[metric.probe]
        if metric.probe not in pats:
            pats[metric.probe] = model.patterns(probe.tokens[:n])
        if not pats[metric.probe]:
            continue
        sub = Probe(probe.tokens[:n], probe.bos, *(None if x is None else x[:n]
                                                    for x in (probe.periods, probe.targets, probe.queries)))
        scores = {layer: metric.fn(p, sub) for layer, p in pats[metric.probe].items()}
        out[key] = {str(layer): [round(float(x), 4) for x in s] for layer, s in scores.items()}
        if metric.best:
            out[metric.best] = head_record(best_head(scores))
    return out


def head_record(best: tuple[int, int, float]) -> dict[str, Any]:
    """``{"layer", "head", "name": "L{layer}H{head}", "score"}`` of a :func:`best_head` result."""
    layer, head, score = best
    return {"layer": layer, "head": head, "name": f"L{layer}H{head}", "score": round(score, 4)}

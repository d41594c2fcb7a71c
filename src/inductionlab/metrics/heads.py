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

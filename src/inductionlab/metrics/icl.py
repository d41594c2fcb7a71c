"""In-context-learning score: loss late in the context minus loss early in it (Olsson et al. 2022).

Indices are *prediction* indices into the loss-by-position curve (index ``i`` predicts token
``i + 1``; the curve has ``n_ctx - 1`` entries). The paper's choice is ``late = 500``,
``early = 50``; when the context is too short for that, ``late`` is the last prediction
(``n_ctx - 2``) and ``early = min(50, late // 5)``. For the default presets (``n_ctx = 80``) that
is ``early = 15``, ``late = 78``; for ``n_ctx = 256``, ``(50, 254)``: the early token lies in the
first, unpredictable copy of the repeated block and the late one in a later copy, so a model that
uses its context has a clearly *negative* score (nats).
"""

from __future__ import annotations

import torch

from .induction import loss_by_position

PAPER_INDICES = (50, 500)


def icl_indices(n_ctx: int, early: int | None = None, late: int | None = None) -> tuple[int, int]:
    """``(early, late)`` prediction indices for a context of ``n_ctx`` tokens."""
    last = n_ctx - 2
    if last < 1:
        raise ValueError(f"context of {n_ctx} tokens has no two predictions to compare")
    if late is None:
        late = PAPER_INDICES[1] if last >= PAPER_INDICES[1] else last
    if early is None:
        early = min(PAPER_INDICES[0], late // 5)
    if not 0 <= early < late <= last:
        raise ValueError(f"need 0 <= early < late <= {last}, got early={early}, late={late}")
    return early, late


def icl_score_from_curve(curve: torch.Tensor, early: int, late: int) -> float:
    """``curve[late] - curve[early]`` (a loss-by-position curve ``[n_ctx - 1]``)."""
    return float(curve[late] - curve[early])


@torch.no_grad()
def icl_score(logits: torch.Tensor, tokens: torch.Tensor, early: int | None = None,
              late: int | None = None) -> tuple[float, tuple[int, int], torch.Tensor]:
    """``(score, (early, late), loss_by_position)`` from logits ``[batch, pos, vocab]`` and tokens."""
    curve = loss_by_position(logits, tokens)
    e, l = icl_indices(tokens.shape[1], early, late)
    return icl_score_from_curve(curve, e, l), (e, l), curve

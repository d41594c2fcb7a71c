"""Evaluate a model on held-out repeated-token batches: accuracy, loss, per-head scores."""

from __future__ import annotations

from typing import Any

import torch

from ..data.synthetic import RepeatBatch
from ..models.mode import eval_mode
from .heads import Probe, head_record, pattern_head_scores  # noqa: F401 - head_record: re-exported
from .induction import token_correct, token_losses


@torch.no_grad()
def evaluate_repeat(model, batches: list[RepeatBatch], bos: bool = True, head_scores: bool = True,
                    score_sequences: int = 32) -> dict[str, Any]:
    """Held-out metrics. Accuracy/loss are exact means over all induction positions of all
    ``batches`` (``tokens[batch, pos]``, ``induction_mask[batch, pos-1]``); ``first_period_loss``
    is the mean loss over every other prediction (the first period, whose targets no circuit can
    predict: uniform guessing over the non-BOS tokens gives ln(d_vocab - 1)); per-head scores
    (every registered score of the ``sequence`` and ``repeat`` probes) use the first
    ``score_sequences`` sequences."""
    with eval_mode(model):
        return _evaluate(model, batches, bos, head_scores, score_sequences)


def _evaluate(model, batches: list[RepeatBatch], bos: bool, head_scores: bool, score_sequences: int) -> dict[str, Any]:
    correct = total = 0.0
    loss_sum = torch.zeros((), device=batches[0].tokens.device)
    other_sum = torch.zeros_like(loss_sum)
    other = 0.0
    by_pos = None
    for b in batches:
        logits = model(b.tokens)
        m = b.induction_mask
        correct = correct + (token_correct(logits, b.tokens) & m).sum()
        losses = token_losses(logits, b.tokens)
        loss_sum = loss_sum + (losses * m).sum()
        total = total + m.sum()
        other_sum = other_sum + (losses * ~m).sum()
        other = other + (~m).sum()
        by_pos = losses.sum(0) if by_pos is None else by_pos + losses.sum(0)
    n_seq = sum(b.tokens.shape[0] for b in batches)
    out: dict[str, Any] = {
        "induction_accuracy": float(correct / total),
        "induction_loss": float(loss_sum / total),
        "first_period_loss": float(other_sum / other),
        "loss_by_position": [round(float(x), 4) for x in (by_pos / n_seq)],
    }
    if head_scores:
        first = batches[0]
        probe = Probe(first.tokens, bos, periods=first.periods)
        out.update(pattern_head_scores(model, {"sequence": probe, "repeat": probe}, n=score_sequences))
    return out

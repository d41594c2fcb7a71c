"""Evaluate a model on held-out repeated-token batches: accuracy, loss, per-head scores."""

from __future__ import annotations

from typing import Any

import torch

from ..data.synthetic import RepeatBatch
from .heads import best_head, prefix_matching_score, previous_token_score
from .induction import token_correct, token_losses


@torch.no_grad()
def evaluate_repeat(model, batches: list[RepeatBatch], bos: bool = True, head_scores: bool = True,
                    score_sequences: int = 32) -> dict[str, Any]:
    """Held-out metrics. Accuracy/loss are exact means over all induction positions of all
    ``batches``; ``first_period_loss`` is the mean loss over every other prediction (the first
    period, whose targets no circuit can predict: uniform guessing over the non-BOS tokens gives
    ln(d_vocab - 1)); per-head scores use the first ``score_sequences`` sequences."""
    was_training = model.training
    model.eval()
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
        k = min(score_sequences, first.tokens.shape[0])
        pats = model.patterns(first.tokens[:k])
        prev = {layer: previous_token_score(p, bos) for layer, p in pats.items()}
        pm = {layer: prefix_matching_score(p, first.periods[:k], bos) for layer, p in pats.items()}
        out["previous_token"] = {str(layer): [round(float(x), 4) for x in s] for layer, s in prev.items()}
        out["prefix_matching"] = {str(layer): [round(float(x), 4) for x in s] for layer, s in pm.items()}
        out["best_previous_token_head"] = head_record(best_head(prev))
        out["best_induction_head"] = head_record(best_head(pm))
    if was_training:
        model.train()
    return out


def head_record(best: tuple[int, int, float]) -> dict[str, Any]:
    layer, head, score = best
    return {"layer": layer, "head": head, "name": f"L{layer}H{head}", "score": round(score, 4)}

"""Induction accuracy/loss and loss by position: pure functions of (logits, tokens, mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per prediction: ``[batch, seq-1]`` (prediction at i is of token i+1)."""
    lg = logits[:, :-1].float()
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1),
                           reduction="none").view(tokens.shape[0], -1)


def token_correct(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, seq-1]`` bool: argmax prediction at i equals token i+1."""
    return logits[:, :-1].argmax(-1) == tokens[:, 1:]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def induction_accuracy(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax next-token accuracy over the predictions where ``mask`` is set (``[batch, seq-1]``:
    the target already occurred one period earlier)."""
    return masked_mean(token_correct(logits, tokens).float(), mask)


def induction_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss (nats) over the masked predictions."""
    return masked_mean(token_losses(logits, tokens), mask)


def loss_by_position(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean loss of the prediction made at each position: ``[seq-1]`` (index i predicts token i+1)."""
    return token_losses(logits, tokens).mean(0)

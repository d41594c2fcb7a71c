"""Out-of-distribution evaluation: induction accuracy by period and by context length."""

from __future__ import annotations

import torch

from ..data.synthetic import RepeatedTokens
from .induction import induction_accuracy

OOD_SEED = 2_000_003


@torch.no_grad()
def accuracy_by_period(model, periods: list[int], vocab_size: int, seq_len: int, bos: bool = True,
                       n: int = 128, seed: int = OOD_SEED) -> dict[int, float]:
    """Held-out induction accuracy for each fixed ``period`` (periods that do not repeat within
    ``seq_len`` are skipped)."""
    off = 1 if bos else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for p in periods:
        if 2 * p > seq_len - off:
            continue
        gen = RepeatedTokens(vocab_size, seq_len, p, p, bos, "batch", device, seed=seed + p)
        b = gen.sample(n)
        out[p] = float(induction_accuracy(model(b.tokens), b.tokens, b.induction_mask))
    if was_training:
        model.train()
    return out

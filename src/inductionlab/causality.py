"""Causality guard: logits at position t must not change when tokens after t change."""

from __future__ import annotations

import torch

from .errors import UserError
from .models.mode import eval_mode


class CausalityError(UserError, RuntimeError):
    """The model lets later tokens influence earlier predictions (it leaks the future)."""


@torch.no_grad()
def check_causal(model, vocab_size: int, seq_len: int, batch: int = 4, seed: int = 0,
                 cuts: list[int] | None = None, rtol: float = 1e-5, device: str | torch.device = "cpu") -> None:
    """Raise :class:`CausalityError` unless every logit at positions ``<= t`` is unchanged
    (within ``rtol`` times the largest logit magnitude, however small the logits are) after
    re-drawing all tokens after ``t``. A causal model gives bit-identical prefix logits on CPU.

    Cut points ``t`` default to the start, a few middle positions and ``seq_len - 2``, so a
    convolution padded on both sides or a wrong mask are caught at every offset they leak from.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    with eval_mode(model):
        tokens = torch.randint(0, vocab_size, (batch, seq_len), generator=g).to(device)
        base = model(tokens).float()
        tol = rtol * float(base.abs().max().clamp_min(1e-30))
        cuts = cuts if cuts is not None else sorted({0, 1, seq_len // 3, seq_len // 2, seq_len - 2})
        for t in cuts:
            if not 0 <= t < seq_len - 1:
                continue
            changed = tokens.clone()
            fresh = torch.randint(0, vocab_size, (batch, seq_len - t - 1), generator=g).to(device)
            # make sure every later token really changes
            fresh = torch.where(fresh == changed[:, t + 1:], (fresh + 1) % vocab_size, fresh)
            changed[:, t + 1:] = fresh
            diff = (model(changed).float()[:, : t + 1] - base[:, : t + 1]).abs().max()
            if diff > tol:
                bad = [p for p in range(t + 1)
                       if (model(changed).float()[:, p] - base[:, p]).abs().max() > tol]
                raise CausalityError(
                    f"model is not causal: changing tokens after position {t} changed the logits at "
                    f"position(s) {bad[:5]}{'...' if len(bad) > 5 else ''} by up to {float(diff):.3g} "
                    f"(it sees the future; e.g. a convolution padded on both sides)")

"""Out-of-distribution evaluation: induction accuracy by period and by context length."""

from __future__ import annotations

import torch

from ..models.mode import eval_mode
from ..data.synthetic import RepeatedTokens
from .induction import induction_accuracy

OOD_SEED = 2_000_003


def accuracy_by_period(model, periods: list[int], vocab_size: int, seq_len: int, bos: bool = True,
                       n: int = 128, seed: int = OOD_SEED) -> dict[int, float]:
    """Held-out induction accuracy for each fixed ``period`` (periods that do not repeat within
    ``seq_len`` are skipped)."""
    off = 1 if bos else 0
    device = next(model.parameters()).device
    batches = {}
    for p in periods:
        if 2 * p > seq_len - off:
            continue
        gen = RepeatedTokens(vocab_size, seq_len, p, p, bos, "batch", device, seed=seed + p)
        batches[p] = gen.sample(n)
    if not batches:
        return {}
    tokens = torch.cat([b.tokens for b in batches.values()])
    logits = _run(model, lambda: model(tokens))  # one forward pass for all periods
    out = {}
    for i, (p, b) in enumerate(batches.items()):
        out[p] = float(induction_accuracy(logits[i * n:(i + 1) * n], b.tokens, b.induction_mask))
    return out


def _run(model, fn):
    with eval_mode(model):
        with torch.no_grad():
            return fn()


def max_length(model) -> int | None:
    """Longest sequence the model accepts: ``n_ctx`` with learned/sinusoidal positions, None
    (unbounded) with rotary or no positions."""
    return model.cfg.n_ctx if model.W_pos is not None else None


def accuracy_by_length(model, lengths: list[int], vocab_size: int, period_min: int, period_max: int,
                       bos: bool = True, n: int = 32, seed: int = OOD_SEED) -> tuple[dict[int, float], str | None]:
    """``({length: accuracy}, reason)``: induction accuracy on sequences of each length (periods
    drawn per sequence from the training range). Lengths beyond ``n_ctx`` are skipped for models
    whose positions cannot extrapolate; ``reason`` says why (None when nothing was skipped)."""
    limit = max_length(model)
    reason = None
    device = next(model.parameters()).device

    def go():
        nonlocal reason
        out = {}
        for t in lengths:
            if limit is not None and t > limit:
                reason = (f"{model.cfg.positions} positions cannot run past n_ctx={limit}; "
                          f"lengths > {limit} skipped")
                continue
            gen = RepeatedTokens(vocab_size, t, period_min, period_max, bos, "sequence", device, seed=seed + t)
            b = gen.sample(n)
            out[t] = float(induction_accuracy(model(b.tokens), b.tokens, b.induction_mask))
        return out
    return _run(model, go), reason


def confusing_repeat_batch(vocab_size: int, seq_len: int, period: int, n: int, bos: bool = True,
                           seed: int = OOD_SEED, device="cpu"):
    """``(tokens [n, seq_len], ambiguous [n, seq_len-1] bool)``: ``[BOS] + r + r + ...`` where the
    random block ``r`` itself repeats one token: ``r[j] = r[i]`` for some ``i < j < period - 1``
    with ``r[i+1] != r[j+1]``. ``ambiguous`` marks the predictions, from the second copy of ``r``
    on, made *at* an occurrence of the duplicated token: one-token induction sees two earlier
    occurrences there, followed by different tokens."""
    off = 1 if bos else 0
    if period < 3 or 2 * period > seq_len - off:
        raise ValueError(f"period {period} must be >= 3 and repeat within {seq_len} tokens")
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(off, vocab_size, (n, period), generator=g)
    i = torch.randint(0, period - 2, (n,), generator=g)
    j = i + 1 + (torch.rand(n, generator=g) * (period - 2 - i)).long()  # i < j <= period - 2
    rows = torch.arange(n)
    r[rows, j] = r[rows, i]
    clash = r[rows, j + 1] == r[rows, i + 1]
    r[rows[clash], (j + 1)[clash]] = off + (r[rows[clash], (i + 1)[clash]] - off + 1) % (vocab_size - off)
    idx = torch.arange(seq_len - off)[None, :] % period
    body = torch.gather(r, 1, idx.expand(n, -1))
    if bos:
        body = torch.cat([torch.zeros(n, 1, dtype=torch.long), body], 1)
    c = torch.arange(seq_len - 1) - off  # content index of the position making each prediction
    phase = c % period
    ambiguous = (c[None, :] >= period) & ((phase[None, :] == i[:, None]) | (phase[None, :] == j[:, None]))
    return body.to(device), ambiguous.to(device)


def confusing_repeat_accuracy(model, vocab_size: int, seq_len: int, period: int, bos: bool = True,
                              n: int = 64, seed: int = OOD_SEED) -> float:
    """Accuracy at the ambiguous predictions of :func:`confusing_repeat_batch`. A model matching
    the longer prefix (previous token too) can reach 1; what one-token induction gets there is
    :func:`one_token_induction_accuracy` (about 0.25 when it weighs every earlier occurrence
    equally, 0 when it follows the most recent one)."""
    device = next(model.parameters()).device
    tokens, amb = confusing_repeat_batch(vocab_size, seq_len, period, n, bos, seed, device)
    return _run(model, lambda: float(induction_accuracy(model(tokens), tokens, amb)))


def one_token_induction_accuracy(tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int,
                                 rule: str = "uniform") -> float:
    """Accuracy at the ``mask``ed predictions (``[n, seq-1]``) of an ideal *one-token* induction
    predictor on ``tokens [n, seq]``: it looks up every earlier occurrence ``j < i`` of the token at
    ``i`` and predicts a successor ``tokens[j + 1]``.

    * ``"uniform"``: the successor seen most often (attention spread evenly over the earlier
      occurrences); a tie between ``k`` successors counts ``1/k`` if the target is among them.
    * ``"recent"``: the successor of the most recent earlier occurrence.

    A prediction with no earlier occurrence counts 0. On :func:`confusing_repeat_batch` this is
    the reference level of the ``confusing_repeat`` score: at phase ``i`` of a later copy the two
    successors tie, at phase ``j`` the wrong one (after phase ``i``) has one more occurrence, so
    ``"uniform"`` gets about 0.25 and ``"recent"`` 0."""
    n, t = tokens.shape
    q = torch.arange(t - 1)
    earlier = (q[None, :, None] > q[None, None, :])  # key j < query i (so j + 1 <= i)
    same = (tokens[:, :-1, None] == tokens[:, None, :-1]) & earlier  # [n, i, j]
    succ = tokens[:, 1:]  # successor of position j
    target = tokens[:, 1:]  # target of the prediction made at i
    if rule == "uniform":
        onehot = torch.nn.functional.one_hot(succ, vocab_size).float()  # [n, j, V]
        counts = same.float() @ onehot  # [n, i, V]
        top = counts.max(-1, keepdim=True).values
        tied = (counts == top) & (top > 0)
        credit = tied.gather(-1, target[..., None])[..., 0].float() / tied.sum(-1).clamp_min(1)
    elif rule == "recent":
        last = torch.where(same, q[None, None, :], -1).max(-1).values  # [n, i]
        pred = succ.gather(1, last.clamp_min(0))
        credit = ((pred == target) & (last >= 0)).float()
    else:
        raise ValueError(f"rule must be 'uniform' or 'recent', got {rule!r}")
    m = mask.float()
    return float((credit * m).sum() / m.sum().clamp_min(1))


def confusing_repeat_reference(vocab_size: int, seq_len: int, period: int, bos: bool = True, n: int = 64,
                               seed: int = OOD_SEED) -> dict[str, float]:
    """``{"one_token_uniform", "one_token_recent"}``: what one-token induction scores on the very
    batch :func:`confusing_repeat_accuracy` uses (the level a longer-prefix model must beat)."""
    tokens, amb = confusing_repeat_batch(vocab_size, seq_len, period, n, bos, seed)
    return {f"one_token_{rule}": one_token_induction_accuracy(tokens, amb, vocab_size, rule)
            for rule in ("uniform", "recent")}

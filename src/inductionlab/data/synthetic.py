"""Repeated random tokens: ``[BOS] + r + r + r ...`` cut to the context length.

``r`` is ``P`` tokens drawn uniformly from the non-BOS vocabulary, ``P`` fixed or drawn from
``[period_min, period_max]`` per batch or per sequence. Token 0 is BOS when ``bos`` is on.
Everything is generated on the requested device from an explicit ``torch.Generator``: the same
seed gives the same batches, and the generator state can be saved for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BOS = 0
#: held-out evaluation data is drawn from a generator seeded ``train.seed + EVAL_SEED_OFFSET``
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class RepeatBatch:
    tokens: torch.Tensor  # [batch, seq] int64
    periods: torch.Tensor  # [batch] int64
    #: [batch, seq-1] bool: the prediction made at position i (of token i+1) is an induction
    #: position, i.e. the token *at* i occurred exactly one period earlier (see :func:`induction_mask`)
    induction_mask: torch.Tensor


def induction_mask(periods: torch.Tensor, seq_len: int, bos: bool) -> torch.Tensor:
    """``[batch, seq_len-1]`` mask of the predictions an induction circuit can make.

    The prediction made at position ``i`` (of token ``i+1``) counts iff the token *at* ``i``
    occurred exactly one period earlier (content index ``i - bos >= P``): then the earlier
    occurrence's successor is the target. The prediction made at the last token of the first
    copy (content index ``P - 1``) does not count: its target is already in the context, but
    the token it is made from has never been seen, so no induction circuit can make it.
    """
    off = 1 if bos else 0
    query_pos = torch.arange(0, seq_len - 1, device=periods.device)  # position making the prediction
    content = query_pos - off  # its index inside the repeated content (-1 for BOS)
    return content[None, :] >= periods[:, None]


class RepeatedTokens:
    """Generator of repeated-random-token batches."""

    def __init__(self, vocab_size: int, seq_len: int, period_min: int, period_max: int | None = None,
                 bos: bool = True, period_mode: str = "batch", device: str | torch.device = "cpu",
                 seed: int = 0):
        period_max = period_min if period_max is None else period_max
        off = 1 if bos else 0
        if not 1 <= period_min <= period_max:
            raise ValueError(f"need 1 <= period_min <= period_max, got {period_min}, {period_max}")
        if 2 * period_max > seq_len - off:
            raise ValueError(f"period {period_max} does not repeat within {seq_len} tokens")
        if vocab_size - off < 2:
            raise ValueError("vocabulary too small")
        if period_mode not in ("batch", "sequence"):
            raise ValueError(f"period_mode must be 'batch' or 'sequence', got {period_mode!r}")
        self.vocab_size, self.seq_len, self.bos = vocab_size, seq_len, bos
        self.period_min, self.period_max, self.period_mode = period_min, period_max, period_mode
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # exact resume
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _periods(self, batch: int) -> torch.Tensor:
        g, lo, hi = self.generator, self.period_min, self.period_max
        if self.period_mode == "batch":
            p = torch.randint(lo, hi + 1, (1,), generator=g, device=self.device).expand(batch)
        else:
            p = torch.randint(lo, hi + 1, (batch,), generator=g, device=self.device)
        return p

    def sample(self, batch: int, period: int | None = None, seq_len: int | None = None) -> RepeatBatch:
        """One batch; ``period``/``seq_len`` override the training distribution (OOD evaluation)."""
        seq_len = seq_len or self.seq_len
        off = 1 if self.bos else 0
        if period is None:
            periods = self._periods(batch)
        else:
            periods = torch.full((batch,), period, dtype=torch.long, device=self.device)
        width = int(self.period_max if period is None else period)
        r = torch.randint(off, self.vocab_size, (batch, width), generator=self.generator, device=self.device)
        idx = torch.arange(seq_len - off, device=self.device)[None, :] % periods[:, None]
        body = torch.gather(r, 1, idx)
        if self.bos:
            body = torch.cat([torch.full((batch, 1), BOS, dtype=torch.long, device=self.device), body], 1)
        return RepeatBatch(body, periods, induction_mask(periods, seq_len, self.bos))

    def fixed_set(self, n: int, batch: int = 256) -> list[RepeatBatch]:
        """``n`` sequences from this generator, in batches (for held-out evaluation sets)."""
        out, left = [], n
        while left > 0:
            b = min(batch, left)
            out.append(self.sample(b))
            left -= b
        return out

"""Repeated random tokens ``[BOS] + r + r + ...`` (``data.kind = "repeat"``): the induction task.

The headline is held-out induction accuracy (argmax accuracy over the predictions an induction
circuit can make: the token they are made from occurred one period earlier); the analysis is the
full measurement suite (metrics/suite.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config, DataConfig, check
from ..data.synthetic import EVAL_SEED_OFFSET, RepeatedTokens
from ..metrics.evaluate import evaluate_repeat
from ..metrics.suite import analyze_repeat
from ..registry import TaskSpec, register_task

PERIOD_MODES = ("batch", "sequence")


@dataclass
class RepeatConfig(DataConfig):
    kind: str = "repeat"
    period_min: int = 20
    period_max: int = 29
    period_mode: str = "batch"  # draw the period per batch or per sequence
    bos: bool = True

    def validate(self, cfg: Config) -> None:
        m = cfg.model
        check(self.period_mode in PERIOD_MODES, f"data.period_mode must be one of {', '.join(PERIOD_MODES)}")
        check(1 <= self.period_min <= self.period_max,
              f"data.period_min ({self.period_min}) must be >= 1 and <= data.period_max ({self.period_max})")
        usable = m.n_ctx - (1 if self.bos else 0)
        check(2 * self.period_max <= usable,
              f"data.period_max ({self.period_max}) is longer than the context allows: a period must repeat at "
              f"least once in model.n_ctx={m.n_ctx} tokens{' after BOS' if self.bos else ''} (max {usable // 2})")
        check(m.vocab_size - (1 if self.bos else 0) >= 2, "model.vocab_size too small for random tokens")


class RepeatTask:
    """Repeated random tokens; evaluation on a fixed held-out set with per-sequence periods."""

    def __init__(self, cfg: Config, device: torch.device):
        m, d, t = cfg.model, cfg.data, cfg.train
        self.spec = SPEC
        self.cfg = cfg
        self.bos = d.bos
        self.loss_on = t.loss_on
        self.data = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos,
                                   d.period_mode, device, seed=t.seed)
        held_out = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos,
                                  "sequence", device, seed=t.seed + EVAL_SEED_OFFSET)
        self.eval_batches = held_out.fixed_set(d.eval_sequences)

    def train_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.data.sample(batch_size)
        return b.tokens, (b.induction_mask if self.loss_on == "induction" else None)

    def evaluate(self, model) -> dict[str, Any]:
        return evaluate_repeat(model, self.eval_batches, self.bos)

    def analyze(self, model) -> dict[str, Any]:
        """The full measurement suite (slower; run at log-spaced evaluations)."""
        return analyze_repeat(model, self.cfg, self.eval_batches)

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.data.load_state_dict(state)


SPEC = register_task(TaskSpec(
    "repeat", RepeatConfig, RepeatTask, headline="induction_accuracy", higher_is_better=True,
    description="repeated random tokens [BOS] + r + r + ...",
    phase_tracking=True))

"""When things happen in a run: the learning-rate schedule, the evaluation steps and which of
them run the full measurement suite (pure functions of the config)."""

from __future__ import annotations

import math

from .config import Config


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of ``train.lr`` at optimizer step ``step`` (0-based)."""
    t = cfg.train
    if t.warmup and step < t.warmup:
        return (step + 1) / t.warmup
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.warmup)
    progress = min(1.0, (step - t.warmup) / span)
    return t.min_lr_frac + (1 - t.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def eval_steps(cfg: Config) -> list[int]:
    """Regular evaluations every ``eval_every`` steps, ``log_evals`` log-spaced ones before the
    first regular one (the early, fast-changing part of training), and the last step."""
    t = cfg.train
    steps = set(range(t.eval_every, t.steps + 1, t.eval_every)) | {t.steps}
    if t.log_evals:
        hi = min(t.eval_every, t.steps)
        for i in range(t.log_evals):
            steps.add(max(1, round(hi ** (i / t.log_evals))))
    return sorted(s for s in steps if 1 <= s <= t.steps)


def full_metric_steps(cfg: Config) -> set[int]:
    """Evaluation steps that also run the full suite and keep a checkpoint (the last step always)."""
    t = cfg.train
    evals = eval_steps(cfg)
    if t.full_metrics == "all":
        return set(evals)
    chosen = {t.steps}
    if t.full_metrics == "log":
        regular = [s for s in evals if s >= min(t.eval_every, t.steps)]
        lo, hi = regular[0], regular[-1]
        for i in range(t.full_evals):
            want = lo * (hi / lo) ** (i / max(1, t.full_evals - 1))
            chosen.add(min(regular, key=lambda s: abs(math.log(s) - math.log(want))))
    return chosen

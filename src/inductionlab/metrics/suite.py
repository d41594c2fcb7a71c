"""The full measurement suite run at log-spaced evaluations (see docs/metrics.md)."""

from __future__ import annotations

from typing import Any


def analyze_repeat(model, cfg, eval_batches) -> dict[str, Any]:
    """Extra per-head measurements merged into the metrics-log record. Filled in by the
    measurement-suite work; returns nothing extra yet."""
    return {}

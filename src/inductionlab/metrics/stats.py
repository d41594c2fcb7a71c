"""Small statistics for claims across seeds or sequences: mean with a t-interval."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p >= 0.5``) of Student's t with ``df >= 1`` degrees of freedom:
    bisection on the CDF, integrated with Simpson's rule (accurate to ~1e-6)."""
    if df < 1 or not 0.5 <= p < 1:
        raise ValueError(f"need df >= 1 and 0.5 <= p < 1, got df={df}, p={p}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:
        x = np.linspace(0.0, t, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + (x[1] - x[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half_width, n)`` of the finite values: the t-interval is mean ± half_width
    (half_width is NaN for a single value, mean NaN for none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(xs) / n
    if n == 1:
        return m, float("nan"), 1
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n


def fmt_ci(values: Iterable[float], digits: int = 3) -> str:
    """``"0.952 ± 0.010"`` (mean ± 95% half-width), ``"0.952"`` for one value, ``"–"`` for none."""
    m, h, n = mean_ci(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {h:.{digits}f}"

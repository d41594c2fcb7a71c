"""Phase-change detection on logged training curves (pure functions of steps and values).

Method (``change_point``):

1. Work in ``x = log10(step)``; linearly interpolate the curve onto ``GRID`` evenly spaced points
   between the first and last logged step (log-spaced early evaluations and regular later ones
   then weigh equally per decade).
2. Light smoothing: a centred moving average over ``SMOOTH`` of the log-step range (5%).
3. The change point is where the smoothed curve moves fastest *in the direction of its total
   change* (largest ``dy/dx`` for a rising curve, most negative for a falling one).
4. Its **window** spans from the last grid point before the change point where the smoothed curve
   has covered ``LOW`` (10%) of the total change, to the first after it where it has covered
   ``HIGH`` (90%). The total change runs from the curve's value at the first logged step to its
   value at the last one.
5. **bump**: on the raw logged points inside the window (widened by one record each side), the
   largest move *against* the direction of the total change — for a falling loss, the largest rise
   above the running minimum — relative to ``|total change|``. ``bump`` is flagged when it exceeds
   ``BUMP_TOL`` (5%): a temporary rise/non-monotonic stretch around the phase change.

Steps are returned as logged steps (the change point is the logged step nearest to it in log space);
``step_interp`` is the change point on the interpolation grid itself (finer than the log).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

GRID = 200
SMOOTH = 0.05
LOW, HIGH = 0.1, 0.9
BUMP_TOL = 0.05


def _nearest(steps: np.ndarray, x: float) -> int:
    return int(steps[np.argmin(np.abs(np.log10(steps) - x))])


def change_point(steps: Iterable[float], values: Iterable[float], smooth: float = SMOOTH,
                 bump_tol: float = BUMP_TOL) -> dict[str, Any] | None:
    """``{"step", "step_interp", "window": [lo, hi], "direction": +1|-1, "change": total, "bump": bool,
    "bump_size": float}`` or None when there are fewer than 3 finite points or no change."""
    s = np.asarray(list(steps), dtype=float)
    v = np.asarray(list(values), dtype=float)
    ok = np.isfinite(s) & np.isfinite(v) & (s > 0)
    s, v = s[ok], v[ok]
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if len(s) < 3 or s[0] == s[-1]:
        return None
    total = v[-1] - v[0]
    if total == 0:
        return None
    direction = 1.0 if total > 0 else -1.0
    lx = np.log10(s)
    grid = np.linspace(lx[0], lx[-1], GRID)
    y = np.interp(grid, lx, v)
    w = max(1, int(round(smooth * GRID)))
    if w > 1:
        pad = np.pad(y, (w // 2, w - 1 - w // 2), mode="edge")
        y = np.convolve(pad, np.ones(w) / w, mode="valid")
    slope = np.gradient(y, grid) * direction
    i = int(np.argmax(slope))
    frac = (y - v[0]) / total  # 0 at the start, 1 at the end (smoothed)
    before = np.nonzero(frac[: i + 1] <= LOW)[0]
    after = np.nonzero(frac[i:] >= HIGH)[0]
    lo_x = grid[before[-1]] if len(before) else grid[0]
    hi_x = grid[i + after[0]] if len(after) else grid[-1]
    lo, hi = _nearest(s, lo_x), _nearest(s, hi_x)
    inside = np.nonzero((s >= lo) & (s <= hi))[0]
    a = max(0, inside[0] - 1) if len(inside) else 0
    b = min(len(s) - 1, inside[-1] + 1) if len(inside) else len(s) - 1
    seg = v[a:b + 1] * direction  # rising in the direction of the change
    running = np.maximum.accumulate(seg)
    bump_size = float(np.max(running - seg) / abs(total))
    return {"step": _nearest(s, grid[i]), "step_interp": round(float(10 ** grid[i]), 1), "window": [lo, hi], "direction": int(direction),
            "change": float(total), "bump": bool(bump_size > bump_tol), "bump_size": round(bump_size, 4)}


def _curve(records: list[dict], key) -> tuple[list[float], list[float]]:
    steps, vals = [], []
    for r in records:
        try:
            val = key(r)
        except (KeyError, TypeError, ValueError):
            continue
        if val is None or not math.isfinite(val):
            continue
        steps.append(r["step"])
        vals.append(float(val))
    return steps, vals


def max_head(scores: dict[str, list[float]]) -> float | None:
    """Largest per-head score in a ``{"layer": [per head]}`` record (None when there are no heads)."""
    return max((x for heads in scores.values() for x in heads), default=None)


#: curve name -> how to read it off one metrics.jsonl record
CURVES = {
    "prefix_matching": lambda r: max_head(r["prefix_matching"]),
    "previous_token": lambda r: max_head(r["previous_token"]),
    "induction_loss": lambda r: r["induction_loss"],
    "induction_accuracy": lambda r: r["induction_accuracy"],
    "icl_score": lambda r: r["icl_score"],  # full-suite records only
}


def phase_from_log(records: list[dict], curves: Iterable[str] | None = None) -> dict[str, Any]:
    """``{curve: change_point(...)}`` for the logged curves present in ``records`` (metrics.jsonl
    dicts with ``"step"``), plus ``"eval_interval"`` (the largest gap between consecutive logged
    steps inside the detected windows, i.e. the resolution of the step estimates) and
    ``"agreement"``: ``|step(prefix_matching) - step(induction_loss)|`` when both exist."""
    out: dict[str, Any] = {}
    for name in curves or CURVES:
        steps, vals = _curve(records, CURVES[name])
        cp = change_point(steps, vals)
        if cp is not None:
            out[name] = cp
    all_steps = sorted({r["step"] for r in records if "step" in r})
    gaps = [b - a for a, b in zip(all_steps, all_steps[1:])]
    if "prefix_matching" in out and "induction_loss" in out:
        a, b = out["prefix_matching"]["step"], out["induction_loss"]["step"]
        out["agreement"] = abs(a - b)
        lo, hi = min(a, b), max(a, b)
        local = [g for x, g in zip(all_steps[1:], gaps) if lo <= x <= hi + max(gaps or [0])]
        out["eval_interval"] = max(local) if local else (max(gaps) if gaps else 0)
    return out

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

Densely tracked curves (tracking.jsonl, every ``train.track_every`` steps) go through
``change_point_tracked``: the log-grid method above only supplies the direction and a coarse
window; the change step is the centre of a logistic least-squares fitted on *linear* steps near
the change (on dense noisy curves the log-grid slope maximum is biased late, d/dlog s = s d/ds,
and jumps by several intervals with noise; tests/test_metrics_phase.py measures both). Beside it
come the fit's onset (``step_onset``, 10% of the fitted change) and quality (``fit_r2``); a pair
with a poorly fitted curve (``FIT_R2_MIN``) gets no verdict in ``phase_statistics``.
``phase_from_run`` (summary.json's ``phase_change``) uses the tracked curves where present and the
logged ones otherwise, with each curve's resolution, and ``phase_statistics`` compares the change
steps of several runs (seeds): mean, 95% t-interval, pairwise lags and which curve moves first.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .heads import HEAD_METRICS
from .stats import mean_ci

GRID = 200
SMOOTH = 0.05
LOW, HIGH = 0.1, 0.9
BUMP_TOL = 0.05


def _sorted_finite(steps: Iterable[float], values: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points with finite values and positive finite steps, sorted by step (stable)."""
    s = np.asarray(list(steps), dtype=float)
    v = np.asarray(list(values), dtype=float)
    ok = np.isfinite(s) & np.isfinite(v) & (s > 0)
    order = np.argsort(s[ok], kind="stable")
    return s[ok][order], v[ok][order]


def _nearest(steps: np.ndarray, x: float, log: bool = True) -> float:
    """The element of ``steps`` nearest to ``x``: in log10 space (``x`` is a log10 step) or, with
    ``log=False``, in linear steps."""
    d = np.log10(steps) - x if log else steps - x
    return float(steps[int(np.argmin(np.abs(d)))])


def change_point(steps: Iterable[float], values: Iterable[float], smooth: float = SMOOTH,
                 bump_tol: float = BUMP_TOL) -> dict[str, Any] | None:
    """``{"step", "step_interp", "window": [lo, hi], "direction": +1|-1, "change": total, "bump": bool,
    "bump_size": float}`` or None when there are fewer than 3 finite points or no change."""
    s, v = _sorted_finite(steps, values)
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
    lo, hi = int(_nearest(s, lo_x)), int(_nearest(s, hi_x))
    inside = np.nonzero((s >= lo) & (s <= hi))[0]
    a = max(0, inside[0] - 1) if len(inside) else 0
    b = min(len(s) - 1, inside[-1] + 1) if len(inside) else len(s) - 1
    seg = v[a:b + 1] * direction  # rising in the direction of the change
    running = np.maximum.accumulate(seg)
    bump_size = float(np.max(running - seg) / abs(total))
    return {"step": int(_nearest(s, grid[i])), "step_interp": round(float(10 ** grid[i]), 1), "window": [lo, hi], "direction": int(direction),
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


#: scalar curves: name -> how to read it off one metrics.jsonl record
SCALAR_CURVES = {
    "induction_loss": lambda r: r["induction_loss"],
    "induction_accuracy": lambda r: r["induction_accuracy"],
    "icl_score": lambda r: r["icl_score"],  # full-suite records only
}


def curve_readers(extra: Iterable[str] = ()) -> dict[str, Any]:
    """Curve name -> reader of one record: the best head of every pattern-based per-head score
    registered in metrics/heads.py (read now, so a score registered later is a curve too), then
    :data:`SCALAR_CURVES` and the scalar metrics ``extra`` (a task's headline). A curve a run did
    not log is skipped."""
    heads = {key: (lambda r, key=key: max_head(r[key])) for key, m in HEAD_METRICS.items() if m.source == "pattern"}
    more = {key: (lambda r, key=key: r[key]) for key in extra if key not in SCALAR_CURVES}
    return {**heads, **SCALAR_CURVES, **more}


def phase_from_log(records: list[dict], curves: Iterable[str] | None = None,
                   extra: Iterable[str] = ()) -> dict[str, Any]:
    """``{curve: change_point(...)}`` for the logged curves present in ``records`` (metrics.jsonl
    dicts with ``"step"``), plus ``"eval_interval"`` (the largest gap between consecutive logged
    steps inside the detected windows, i.e. the resolution of the step estimates) and
    ``"agreement"``: ``|step(prefix_matching) - step(induction_loss)|`` when both exist."""
    out: dict[str, Any] = {}
    readers = curve_readers(extra)
    for name in curves or readers:
        steps, vals = _curve(records, readers[name])
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


# --------------------------------------------------------------------------- tracked curves
#: the curves of tracking.jsonl (metrics/tracking.py); pairwise lags are reported between these
TRACKED = ("previous_token", "prefix_matching", "induction_loss", "icl_score")
#: a tracked (dense, noisy) curve's change, and its bump, must exceed this many noise standard
#: deviations
NOISE_SIGMAS = 5
#: sub-steps per tracking interval of the grid the logistic centre is finally searched on
FIT_SUBSTEPS = 10
FIT_WIDTHS = 40
#: at most this many centres on the first (coarsest) centre grid of the logistic fit; each
#: refinement then searches ``2 * FIT_SUBSTEPS + 1`` centres
FIT_CENTRES = 50
#: :func:`fit_logistic` evaluates the sigmoid on at most this many (centre, width, point)
#: triples at a time (float64: 2 MiB per temporary array), so its memory does not grow with the
#: number of centres x widths x points
FIT_CHUNK = 2**18
#: a logistic that explains less than this share of the variance of the points it was fitted to
#: (``fit_r2`` = 1 - SSE/SST) does not describe the curve's change (e.g. a curve that changes in
#: two steps, R² ~0.87 in tests/test_metrics_phase.py, or one dominated by noise): its ``step_fit``
#: is not a meaningful change step, and :func:`phase_statistics` gives no verdict ("poor fit") for
#: a pair involving it. R² depends on the noise too (noise of 15% of the change alone gives
#: ~0.87-0.94). It does not catch a curve that keeps rising after its change (the logistic widens,
#: R² ~0.98, ``step_fit`` moves late); ``step_onset`` moves much less there
FIT_R2_MIN = 0.9


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow: ``z`` clipped to +-500 first (the result is
    unchanged in float64 there, it is 0 or 1 to within 1e-217)."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def step_resolution(steps: Iterable[float], step: float) -> int | float:
    """The sampling interval of ``steps`` at ``step``: the larger of the gaps on either side of the
    sampled step nearest to it (0 with fewer than two steps)."""
    s = np.unique(np.asarray(list(steps), dtype=float))
    if len(s) < 2:
        return 0
    i = int(np.argmin(np.abs(s - step)))
    gap = float(max(s[j + 1] - s[j] for j in (i - 1, i) if 0 <= j < len(s) - 1))
    return int(gap) if gap.is_integer() else gap


def fit_logistic(steps: np.ndarray, values: np.ndarray, direction: int, centres: np.ndarray,
                 widths: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares ``values ≈ a + b * sigmoid((steps - c) / w)`` over the grid ``centres x
    widths`` (``a``, ``b`` in closed form; ``b`` restricted to the sign of ``direction``).
    Returns ``(c, w, a, b)``. Shapes: ``steps``, ``values`` ``[n]``; ``centres`` ``[C]``;
    ``widths`` ``[W]``. The (centre, width) pairs are evaluated in chunks of ``FIT_CHUNK // n``
    (peak memory O(``FIT_CHUNK``), not O(C W n)); ties go to the first pair in centre-major
    order."""
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    centres = np.asarray(centres, dtype=float)
    widths = np.asarray(widths, dtype=float)
    n, n_w = len(steps), len(widths)
    yc = values - values.mean()
    pairs = len(centres) * n_w
    chunk = max(1, FIT_CHUNK // max(n, 1))
    best = (-np.inf, 0, 0.0, 0.0)  # (gain, pair index, b, mean of x)
    for k0 in range(0, pairs, chunk):
        k = np.arange(k0, min(pairs, k0 + chunk))
        c, w = centres[k // n_w], widths[k % n_w]
        x = _sigmoid((steps[None, :] - c[:, None]) / w[:, None])  # [chunk, n]
        mx = x.mean(-1)
        x -= mx[:, None]
        sxx = np.einsum("ij,ij->i", x, x)
        sxy = x @ yc
        b = np.where(sxx > 1e-12, sxy / np.maximum(sxx, 1e-12), 0.0)
        gain = np.where(b * direction > 0, sxy * b, -np.inf)  # SSE = Syy - Sxy^2 / Sxx
        i = int(np.argmax(gain))
        if gain[i] > best[0]:
            best = (float(gain[i]), int(k[i]), float(b[i]), float(mx[i]))
    _, kb, b, mx = best
    a = float(values.mean() - b * mx)
    return float(centres[kb // n_w]), float(widths[kb % n_w]), a, b


def _fit_search(ls: np.ndarray, lv: np.ndarray, direction: int, gap: float,
                widths: np.ndarray) -> tuple[float, float, float, float]:
    """:func:`fit_logistic` on successively finer centre grids: at most ``FIT_CENTRES`` centres
    (spacing at least one tracking interval ``gap``) over the points, then ``2 * FIT_SUBSTEPS + 1``
    centres within two spacings of the best, the spacing divided by ``FIT_SUBSTEPS`` each time,
    down to ``gap / FIT_SUBSTEPS``. Last, ``w`` is refined on ``2 * FIT_SUBSTEPS + 1`` log-spaced
    values within one step of ``widths`` (log-spaced) of the best, with the centre within two
    finest spacings of the best."""
    spacing = max(gap, (ls[-1] - ls[0]) / (FIT_CENTRES - 1))
    fit = fit_logistic(ls, lv, direction, np.arange(ls[0], ls[-1] + 1e-9, spacing), widths)
    finest = gap / FIT_SUBSTEPS
    while spacing > finest * (1 + 1e-9):
        c, sub = fit[0], max(spacing / FIT_SUBSTEPS, finest)
        fit = fit_logistic(ls, lv, direction, _around(ls, c, 2 * spacing, sub), widths)
        spacing = sub
    c, w = fit[0], fit[1]
    ratio = float(widths[1] / widths[0]) if len(widths) > 1 else 1.0
    fine_w = np.unique(np.append(np.geomspace(w / ratio, w * ratio, 2 * FIT_SUBSTEPS + 1), w))
    return fit_logistic(ls, lv, direction, _around(ls, c, 2 * finest, finest), fine_w)


def _around(ls: np.ndarray, c: float, half: float, spacing: float) -> np.ndarray:
    """Centres ``c - half, ..., c + half`` ``spacing`` apart, cut to the fitted points' span."""
    return np.arange(max(ls[0], c - half), min(ls[-1], c + half) + 1e-9, spacing)


def change_point_tracked(steps: Iterable[float], values: Iterable[float],
                         bump_tol: float = BUMP_TOL) -> dict[str, Any] | None:
    """Change point of a densely tracked curve (tracking.jsonl), located in *linear* steps.

    1. :func:`change_point` (log-step grid) gives the direction and a coarse 10%-90% window.
    2. A logistic ``a + b * sigmoid((step - c) / w)`` is least-squares fitted to the raw points in
       that window widened by its own width (at least 4 intervals) on each side; ``c`` is searched
       on a grid of at most ``FIT_CENTRES`` centres at least one tracking interval apart, then
       refined (:func:`_fit_search`) down to 1/``FIT_SUBSTEPS`` interval, ``w`` over
       ``FIT_WIDTHS`` log-spaced values from 1/4 interval to the neighbourhood's span. Time and
       memory grow linearly with the number of fitted points. ``step_fit = c`` is the step of
       the fastest change of the fitted curve; ``step`` is the tracked step nearest to it;
       ``step_onset = c - w ln 9`` is where the fitted curve has covered 10% of its change (its
       start; meaningful also for a curve that keeps moving after the change). ``fit_r2``:
       1 - SSE/SST of the fit on the fitted points; below ``FIT_R2_MIN`` the logistic does not
       describe the curve and ``step_fit`` is not a meaningful change step.
    3. ``window``: the fit's 10%-90% span ``c ± w ln 9``, snapped to tracked steps; ``width`` its
       length in steps. ``noise``: robust estimate of the curve's point-to-point noise, 1.4826 x the
       median absolute deviation of its second differences / sqrt(6) (insensitive to the change
       itself and to a bump, which touch only a few of them).
       ``bump_size`` as in :func:`change_point` on the raw points inside the window ±1 interval;
       ``bump`` is flagged when it exceeds ``bump_tol`` *and* the rise exceeds ``NOISE_SIGMAS``
       noise standard deviations (so tracking noise is not mistaken for a bump).
    4. ``resolution``: the tracking interval at ``step``; ``relative_resolution`` = resolution /
       step_fit. ``truncated``: the fit's 10% or 90% point lies outside the tracked steps (e.g. the
       run stopped at ``train.target_accuracy`` before the curve levelled off): ``step_fit`` is
       then an extrapolation and should not be trusted.

    Returns None when :func:`change_point` does (too few points, no change) or when the fitted
    change over the fitted points is within ``NOISE_SIGMAS`` noise standard deviations (a flat,
    noisy curve)."""
    s, v = _sorted_finite(steps, values)
    coarse = change_point(s, v, bump_tol=bump_tol)
    if coarse is None or len(s) < 5:
        return None
    direction = coarse["direction"]
    gap = float(np.median(np.diff(np.unique(s))))
    lo, hi = coarse["window"]
    pad = max(float(hi - lo), 4 * gap)
    near = (s >= lo - pad) & (s <= hi + pad)
    if near.sum() < 5:
        near = np.ones_like(s, dtype=bool)
    ls, lv = s[near], v[near]
    widths = np.geomspace(gap / 4, max(gap / 2, ls[-1] - ls[0]), FIT_WIDTHS)
    c, w, a, b = _fit_search(ls, lv, direction, gap, widths)
    half = w * math.log(9)
    w_lo, w_hi = _nearest(s, c - half, log=False), _nearest(s, c + half, log=False)
    d2 = v[:-2] - 2 * v[1:-1] + v[2:]
    noise = float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))
    realised = b * float(_sigmoid((ls[-1] - c) / w) - _sigmoid((ls[0] - c) / w))  # within the fitted points
    if abs(realised) <= NOISE_SIGMAS * noise:
        return None  # no change distinguishable from the tracking noise
    sst = float(np.sum((lv - lv.mean()) ** 2))
    sse = float(np.sum((lv - a - b * _sigmoid((ls - c) / w)) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else 0.0
    seg_idx = np.nonzero((s >= w_lo - gap) & (s <= w_hi + gap))[0]
    seg = v[seg_idx] * direction if len(seg_idx) else np.zeros(1)
    rise = float(np.max(np.maximum.accumulate(seg) - seg))
    total = float(coarse["change"])
    bump_size = rise / abs(total)
    res = step_resolution(s, c)
    return {"step": int(_nearest(s, c, log=False)), "step_fit": round(c, 1), "step_onset": round(c - half, 1),
            "fit_r2": round(r2, 4), "window": [int(w_lo), int(w_hi)],
            "width": round(2 * half, 1), "direction": direction, "change": round(total, 5),
            "fit_change": round(b, 5), "noise": round(noise, 5),
            "bump": bool(bump_size > bump_tol and rise > NOISE_SIGMAS * noise),
            "bump_size": round(bump_size, 4),
            "resolution": res, "relative_resolution": round(res / c, 4) if c > 0 else None,
            "truncated": bool(c - half < s[0] or c + half > s[-1]),
            "source": "tracking", "method": "logistic fit on linear steps"}


def pairwise_lags(phase: dict[str, Any], curves: Iterable[str] = TRACKED) -> list[dict[str, Any]]:
    """``[{"a", "b", "lag": step_b - step_a, "resolution"}]`` for every pair of ``curves`` (in
    that order) present in ``phase``; a positive lag means ``a`` changes first. Uses ``step_fit``
    where present, else ``step``; ``resolution`` is the coarser of the two curves'."""
    present = [c for c in curves if isinstance(phase.get(c), dict)]
    out = []
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            pa, pb = phase[a], phase[b]
            out.append({"a": a, "b": b, "lag": round(change_step(pb) - change_step(pa), 1),
                        "resolution": max(pa.get("resolution", 0), pb.get("resolution", 0))})
    return out


def change_step(cp: dict[str, Any]) -> float:
    """The change step of one curve's result: ``step_fit`` when it was fitted, else ``step``."""
    return float(cp.get("step_fit", cp["step"]))


def phase_from_run(records: list[dict], tracked: list[dict] | None = None, extra: Iterable[str] = ()) -> dict[str, Any]:
    """``summary.json["phase_change"]``: :func:`phase_from_log` of the evaluation records, with
    every curve of ``tracked`` (tracking.jsonl records) replaced by :func:`change_point_tracked`
    on its dense curve. Each curve gets ``resolution`` / ``relative_resolution`` (for log curves:
    the evaluation interval at the step) and ``source`` ("tracking" or "metrics"); ``lags`` are the
    :func:`pairwise_lags` of the tracked curves; ``agreement`` and ``eval_interval`` are
    recomputed from the tracked curves when present."""
    out = phase_from_log(records, extra=extra)
    log_steps = [r["step"] for r in records if "step" in r]
    for name in curve_readers(extra):
        if isinstance(out.get(name), dict):
            res = step_resolution(log_steps, out[name]["step"])
            out[name].update(resolution=res, relative_resolution=round(res / out[name]["step"], 4),
                             source="metrics")
    tracked = tracked or []
    for name in TRACKED:
        steps, vals = _curve(tracked, lambda r: r[name])
        cp = change_point_tracked(steps, vals)
        if cp is not None:
            out[name] = cp
    pm, il = out.get("prefix_matching"), out.get("induction_loss")
    if tracked and isinstance(pm, dict) and isinstance(il, dict):
        out["agreement"] = abs(pm["step"] - il["step"])
        out["eval_interval"] = max(pm["resolution"], il["resolution"])
    out["source"] = "tracking.jsonl" if tracked else "metrics.jsonl"
    out["lags"] = pairwise_lags(out)
    return out


# --------------------------------------------------------------------------- across runs
def t_interval(values: Iterable[float], level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "ci": [lo, hi] (None for fewer than 2 values), "n", "values"}``: the t-interval
    ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` of the finite ``values`` (steps, rounded to 0.01)."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    mean, half, n = mean_ci(xs, level)
    if not n:
        return {"mean": None, "ci": None, "n": 0, "values": []}
    ci = [round(mean - half, 2), round(mean + half, 2)] if n >= 2 else None
    return {"mean": round(mean, 2), "ci": ci, "n": n, "values": xs}


def lag_verdict(a: str, b: str, ci: list[float] | None) -> str:
    """``"<a> first"`` when the interval of ``step_b - step_a`` lies above 0, ``"<b> first"`` when
    below, ``"together"`` when it contains 0, ``"undetermined"`` without an interval."""
    if ci is None:
        return "undetermined"
    if ci[0] > 0:
        return f"{a} first"
    if ci[1] < 0:
        return f"{b} first"
    return "together"


def poor_fit(cp: dict[str, Any]) -> bool:
    """Whether a curve's logistic fit is poor: ``fit_r2 < FIT_R2_MIN`` (False for curves that were
    not fitted, e.g. from metrics.jsonl)."""
    r2 = cp.get("fit_r2")
    return r2 is not None and r2 < FIT_R2_MIN


def ordering_chain(order: list[str], verdicts: dict[tuple[str, str], str]) -> str:
    """``"a < b ≈ c"``: ``order`` (curves sorted by mean change step) cut into groups so that
    every curve of a group changes before every curve of every later group at the chosen level
    (each such pair's verdict in ``verdicts`` ``{(a, b): verdict}``, either order, is "<x> first"
    for the earlier one). Starting from one group per curve, the groups from i to j are merged
    whenever some pair across groups i and j is not apart (together, undetermined, poor fit), until
    none is. So ``<`` holds for every pair across it; within a ``≈`` group, some pairs may still
    be apart (see the pairwise verdicts)."""
    def first(x: str, y: str) -> bool:
        return (verdicts.get((x, y)) or verdicts.get((y, x))) == f"{x} first"

    groups = [[c] for c in order]
    changed = True
    while changed:
        changed = False
        for i in range(len(groups)):
            j = next((j for j in range(i + 1, len(groups))
                      if not all(first(x, y) for x in groups[i] for y in groups[j])), None)
            if j is not None:
                groups[i:j + 1] = [[c for g in groups[i:j + 1] for c in g]]
                changed = True
                break
    return " < ".join(" ≈ ".join(g) for g in groups)


def phase_statistics(phases: list[dict[str, Any]], curves: Iterable[str] = TRACKED,
                     level: float = 0.95) -> dict[str, Any]:
    """Which curve changes first, over runs (e.g. seeds): ``phases`` are :func:`phase_from_run`
    dicts, one per run. Returns ``{"n_runs", "level", "sources", "curves": {curve: t_interval of
    the change steps + "resolution" / "relative_resolution" (largest over runs) + "truncated"
    (number of runs whose curve was cut before it levelled off) + "onset" (t_interval of
    ``step_onset``, None when no run has one) + "fit_r2" (the lowest over the runs, None when no
    run's curve was fitted) + "poor_fit" (number of runs with ``fit_r2 < FIT_R2_MIN``)}, "lags":
    [{"a", "b", t_interval of step_b - step_a, "verdict"}], "ordering": "a < b ≈ c ..."}``.
    ``verdict`` is :func:`lag_verdict`'s, or "poor fit" when either curve's fit is poor in any
    of the runs compared (its change step is not meaningful). ``ordering``:
    :func:`ordering_chain` of the curves sorted by mean change step (``<`` only where every pair
    across it is apart)."""
    names = [c for c in curves if any(isinstance(p.get(c), dict) for p in phases)]
    per_curve: dict[str, Any] = {}
    for c in names:
        cps = [p[c] for p in phases if isinstance(p.get(c), dict)]
        st = t_interval((change_step(cp) for cp in cps), level)
        st["resolution"] = max((cp.get("resolution", 0) for cp in cps), default=0)
        st["relative_resolution"] = max((cp.get("relative_resolution") or 0 for cp in cps), default=0)
        st["truncated"] = sum(bool(cp.get("truncated")) for cp in cps)
        onsets = [cp["step_onset"] for cp in cps if cp.get("step_onset") is not None]
        st["onset"] = t_interval(onsets, level) if onsets else None
        st["fit_r2"] = min((cp["fit_r2"] for cp in cps if cp.get("fit_r2") is not None), default=None)
        st["poor_fit"] = sum(poor_fit(cp) for cp in cps)
        per_curve[c] = st
    lags = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = [p for p in phases if isinstance(p.get(a), dict) and isinstance(p.get(b), dict)]
            st = t_interval((change_step(p[b]) - change_step(p[a]) for p in both), level)
            poor = any(poor_fit(p[a]) or poor_fit(p[b]) for p in both)
            lags.append({"a": a, "b": b, **st, "verdict": "poor fit" if poor else lag_verdict(a, b, st["ci"])})
    order = sorted(names, key=lambda c: per_curve[c]["mean"])
    ordering = ordering_chain(order, {(g["a"], g["b"]): g["verdict"] for g in lags})
    return {"n_runs": len(phases), "level": level, "sources": sorted({p.get("source", "?") for p in phases}),
            "curves": per_curve, "lags": lags, "ordering": ordering}

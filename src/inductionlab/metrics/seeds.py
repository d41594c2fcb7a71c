"""Across-seed summaries: phase-change steps and final scores of several runs of one config.

``inductionlab train PRESET --seeds 0-4`` trains each seed into ``RUN_DIR/seed_K`` and calls
``summarize_seeds`` on those directories, then prints ``format_seed_summary``.
``inductionlab phase RUN_DIR...`` prints ``format_phase_table(phase_across_seeds(find_run_dirs(...)))``:
which tracked curve changes first, with 95% t-intervals over the runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .phase import FIT_R2_MIN, change_step, max_head, phase_from_run, phase_statistics
from .tracking import read_records, read_tracking  # noqa: F401 - read_records: re-exported

#: final scores taken from each run's summary.json / last metrics record
FINAL_KEYS = ("induction_accuracy", "induction_loss", "icl_score")
PHASE_CURVES = ("prefix_matching", "induction_loss", "induction_accuracy")


def stats(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std" (sample, 0 for one value), "min", "max", "n", "values"}`` of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": []}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def _final(records: list[dict], summary: dict, key: str) -> float | None:
    if key in summary and summary[key] is not None:
        return summary[key]
    for r in reversed(records):
        if key in r:
            return r[key]
    return None


def _best_induction(records: list[dict]) -> float | None:
    for r in reversed(records):
        if "prefix_matching" in r:
            return max_head(r["prefix_matching"])
    return None


def summarize_seeds(run_dirs: Iterable[Path]) -> dict[str, Any]:
    """``{"runs": [...], "phase": {curve: stats of change steps}, "agreement": stats of
    |step(prefix_matching) - step(induction_loss)|, "eval_interval": max, "final": {key: stats},
    "phase_order": phase.phase_statistics of the runs}``. Change steps come from each run's
    tracking.jsonl curves where it has one (``phase.phase_from_run``), else from metrics.jsonl.
    A run whose logs are unreadable (e.g. a finished seed damaged before ``--resume``) raises
    :class:`UserError` (one line)."""
    try:
        return _summarize_seeds(run_dirs)
    except (UserError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"cannot summarise the seed runs: {exc}") from None


def _summarize_seeds(run_dirs: Iterable[Path]) -> dict[str, Any]:
    runs, phases = [], []
    for d in run_dirs:
        d = Path(d)
        records = read_records(d)
        summary_path = d / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        ph = phase_from_run(records, read_tracking(d))
        final = {k: _final(records, summary, k) for k in FINAL_KEYS}
        final["prefix_matching"] = _best_induction(records)
        runs.append({"run_dir": str(d), "steps": records[-1]["step"] if records else None,
                     "phase": ph, "final": final})
        phases.append(ph)
    phase = {c: stats(p[c]["step"] for p in phases if c in p) for c in PHASE_CURVES}
    out = {
        "runs": runs,
        "phase": phase,
        "agreement": stats(p["agreement"] for p in phases if "agreement" in p),
        "eval_interval": max((p.get("eval_interval", 0) for p in phases), default=0),
        "final": {k: stats(r["final"][k] for r in runs) for k in (*FINAL_KEYS, "prefix_matching")},
        "phase_order": phase_statistics(phases),
    }
    return out


def _fmt(s: dict[str, Any], digits: int) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}  [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def format_seed_summary(d: dict[str, Any]) -> str:
    """Plain-text table: mean ± sample std [min, max] over seeds."""
    n = len(d["runs"])
    lines = [f"{n} seed{'s' if n != 1 else ''}: mean ± std [min, max]", "phase-change step:"]
    for c, s in d["phase"].items():
        lines.append(f"  {c:<20} {_fmt(s, 0)}")
    a = d["agreement"]
    if a["n"]:
        lines.append(f"  |prefix_matching - induction_loss|: max {a['max']:.0f} "
                     f"(evaluation interval {d['eval_interval']})")
    order = d.get("phase_order")
    if order and order["ordering"]:
        lines.append(f"  ordering ({', '.join(order['sources'])}): {order['ordering']}")
    lines.append("final:")
    for k, s in d["final"].items():
        lines.append(f"  {k:<20} {_fmt(s, 4)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- inductionlab phase
def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories (holding metrics.jsonl) named by ``paths``: a run directory itself, or a
    ``--seeds`` output directory, which stands for its ``seed_*/`` run directories (by seed).
    Raises :class:`UserError` (one line) for anything else."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            out.append(p)
            continue
        seeds = [d for d in p.glob("seed_*") if (d / "metrics.jsonl").is_file()] if p.is_dir() else []
        if not seeds:
            raise UserError(f"{p} is not a run directory (no metrics.jsonl) nor a --seeds output "
                            "(no seed_*/metrics.jsonl)")
        out.extend(sorted(seeds, key=lambda d: (len(d.name), d.name)))
    if not out:
        raise UserError("no run directories given")
    return out


def run_phase(run_dir: Path) -> dict[str, Any]:
    """:func:`phase.phase_from_run` of one run directory (tracking.jsonl curves when present)."""
    try:
        records, tracked = read_records(run_dir), read_tracking(run_dir)
        if not records:
            raise UserError(f"{run_dir} has no evaluation records yet (metrics.jsonl is empty)")
        return phase_from_run(records, tracked)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"cannot read the curves of {run_dir}: {exc}") from None


def phase_across_seeds(run_dirs: Iterable[Path]) -> dict[str, Any]:
    """:func:`phase.phase_statistics` over ``run_dirs``, plus ``"runs"``: each run's directory and
    per-curve change step (``step_fit`` where fitted)."""
    dirs = [Path(d) for d in run_dirs]
    phases = [run_phase(d) for d in dirs]
    out = phase_statistics(phases)
    out["runs"] = [{"run_dir": str(d), "source": p["source"],
                    **{c: change_step(p[c]) for c in out["curves"] if isinstance(p.get(c), dict)}}
                   for d, p in zip(dirs, phases)]
    return out


def _ci(s: dict[str, Any]) -> str:
    return f"[{s['ci'][0]:.1f}, {s['ci'][1]:.1f}]" if s["ci"] else "n/a"


def format_phase_table(d: dict[str, Any]) -> str:
    """Plain-text table of :func:`phase_across_seeds`: per curve the mean change step, its 95%
    t-interval over runs, the resolution, the mean onset step (``step_onset``: 10% of the fitted
    change) and the lowest fit R² over runs; per pair the mean lag, interval and verdict ("poor
    fit": no verdict, a curve's logistic fit explains < ``phase.FIT_R2_MIN`` of its variance in
    some run)."""
    n = d["n_runs"]
    pct = round(100 * d["level"])
    lines = [f"phase change over {n} run{'s' if n != 1 else ''} (curves from {', '.join(d['sources'])}); "
             f"mean and {pct}% t-interval over runs",
             f"{'curve':<17} {'mean step':>9}  {f'{pct}% CI':<16} {'resolution':<17} {'onset':>8} "
             f"{'fit R²':>6}  per run"]
    for c, s in d["curves"].items():
        res = f"{s['resolution']:g} steps ({100 * s['relative_resolution']:.1f}%)"
        per = " ".join(f"{v:g}" for v in s["values"])
        onset = f"{s['onset']['mean']:.1f}" if s.get("onset") else "n/a"
        r2 = f"{s['fit_r2']:.3f}" if s.get("fit_r2") is not None else "n/a"
        lines.append(f"{c:<17} {s['mean']:>9.1f}  {_ci(s):<16} {res:<17} {onset:>8} {r2:>6}  {per}")
    lines.append(f"{'lag b - a (> 0: a first)':<36} {'mean':>6}  {f'{pct}% CI':<16} verdict")
    for g in d["lags"]:
        pair = f"{g['a']} -> {g['b']}"
        mean = f"{g['mean']:.1f}" if g["mean"] is not None else "n/a"
        lines.append(f"{pair:<36} {mean:>6}  {_ci(g):<16} {g['verdict']}")
    lines.append(f"ordering: {d['ordering']}  (by mean step; '<': every pair across it is apart at {pct}%, "
                 "'≈': not ordered, see the pairs)")
    apart = []
    for g in d["lags"]:
        if g["verdict"] in (f"{g['a']} first", f"{g['b']} first"):
            first, second = (g["a"], g["b"]) if g["verdict"] == f"{g['a']} first" else (g["b"], g["a"])
            apart.append(f"{first} before {second} by {abs(g['mean']):.1f} steps")
    lines.append(f"pairs apart at {pct}%: {'; '.join(apart) if apart else 'none'}")
    pm_icl = next((g for g in d["lags"] if {g["a"], g["b"]} == {"prefix_matching", "icl_score"}), None)
    if pm_icl is not None:
        lines.append(f"prefix matching vs in-context learning (Olsson et al.: together): {pm_icl['verdict']}")
    poor = [f"{c} ({s['poor_fit']} of {s['n']})" for c, s in d["curves"].items() if s.get("poor_fit")]
    if poor:
        lines.append(f"warning: poor logistic fit (R² < {FIT_R2_MIN}; step_fit not a meaningful change step, "
                     f"no verdict for its pairs): {', '.join(poor)}")
    cut = [f"{c} ({s['truncated']} of {s['n']})" for c, s in d["curves"].items() if s.get("truncated")]
    if cut:
        lines.append(f"warning: curves cut before levelling off (run stopped early; step_fit extrapolated): "
                     f"{', '.join(cut)}; rerun with --set train.target_accuracy=0")
    return "\n".join(lines)

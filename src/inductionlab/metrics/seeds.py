"""Across-seed summaries: phase-change steps and final scores of several runs of one config.

``inductionlab train PRESET --seeds 0-4`` trains each seed into ``RUN_DIR/seed_K`` and calls
``summarize_seeds`` on those directories, then prints ``format_seed_summary``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from .phase import max_head, phase_from_log

#: final scores taken from each run's summary.json / last metrics record
FINAL_KEYS = ("induction_accuracy", "induction_loss", "icl_score")
PHASE_CURVES = ("prefix_matching", "induction_loss", "induction_accuracy")


def read_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


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
    |step(prefix_matching) - step(induction_loss)|, "eval_interval": max, "final": {key: stats}}``."""
    runs, phases = [], []
    for d in run_dirs:
        d = Path(d)
        records = read_records(d)
        summary_path = d / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        ph = phase_from_log(records)
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
    lines.append("final:")
    for k, s in d["final"].items():
        lines.append(f"  {k:<20} {_fmt(s, 4)}")
    return "\n".join(lines)

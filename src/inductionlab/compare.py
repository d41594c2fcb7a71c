"""Compare finished runs side by side (``inductionlab compare RUN_A RUN_B ...``).

Each run directory must hold ``summary.json`` (written when a run finishes) and ``config.toml``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import ConfigError
from .configfile import read_toml
from .errors import UserError
from .metrics.heads import HEAD_METRICS


class CompareError(UserError):
    pass


def _read_summary(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CompareError(f"{run_dir} is not a run directory (no such directory)")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise CompareError(f"{run_dir} is not a finished run (no summary.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path} does not hold a JSON object")
    return data


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.toml"
    if not path.is_file():
        raise CompareError(f"{run_dir} is not a run directory (no config.toml)")
    try:
        return read_toml(path)
    except ConfigError as exc:
        raise CompareError(str(exc)) from None


def compare_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per run: name, architecture, final metrics, sizes and wall time."""
    if not run_dirs:
        raise CompareError("compare needs at least one run directory")
    rows = []
    for rd in run_dirs:
        rd = Path(rd)
        s = _read_summary(rd)
        c = _read_config(rd)
        model, data = (t if isinstance(t := c.get(sec), dict) else {} for sec in ("model", "data"))
        layers = model.get("layers") or None
        row = {
            "run_dir": str(rd),
            "name": str(s.get("name", c.get("name", rd.name))),
            "arch": model.get("arch"),
            "layers": layers,
            "data": data.get("kind", "repeat"),
            "tokenizer": data.get("tokenizer") if data.get("kind") == "text" else None,
            "vocab_size": model.get("vocab_size"),
            "d_model": model.get("d_model"),
            "n_ctx": model.get("n_ctx"),
        }
        for key in ("headline", "steps", "seconds", "n_params", "tokens_seen", "device", "train_loss",
                    "val_loss", "val_accuracy", "icl_score", "icl_indices", "unigram_entropy",
                    "unigram_val_loss", "repeat_accuracy", "induction_accuracy", "induction_loss",
                    *BEST_HEADS):
            row[key] = s.get(key)
        rows.append(row)
    return rows


def _num(v: Any, fmt: str) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        try:
            return format(v, fmt)
        except ValueError:  # e.g. a float where an integer was expected ("d")
            return str(v)
    return str(v)


def _head(rec: Any) -> str:
    if not isinstance(rec, dict) or "name" not in rec:
        return "-"
    score = rec.get("score")
    return f"{rec['name']} ({score:.3f})" if isinstance(score, (int, float)) else str(rec["name"])


def _count(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _seconds(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def _headline(h: Any) -> str:
    if not isinstance(h, dict) or not isinstance(h.get("metric"), str):
        return "-"
    arrow = "higher" if h.get("higher_is_better", True) else "lower"
    return f"{h['metric']} {_num(h.get('value'), '.4f')} ({arrow} is better)"


#: the best-head records of the per-head scores (metrics/heads.py), in registry order
BEST_HEADS = [m.best for m in HEAD_METRICS.values() if m.best]

#: (label, row -> text); a line is printed only if some run has a value for it
LINES = [
    ("headline", lambda r: _headline(r["headline"])),
    ("arch", lambda r: _num(r["arch"], "")),
    ("tokenizer / vocab", lambda r: "-" if r["tokenizer"] is None else f"{r['tokenizer']} / {r['vocab_size']}"),
    ("val loss (nats)", lambda r: _num(r["val_loss"], ".4f")),
    ("unigram entropy (val)", lambda r: _num(r["unigram_entropy"], ".4f")),
    ("val accuracy", lambda r: _num(r["val_accuracy"], ".4f")),
    ("ICL score", lambda r: _num(r["icl_score"], "+.4f") + (
        f" (loss@{r['icl_indices'][1]} - loss@{r['icl_indices'][0]})"
        if isinstance(r["icl_indices"], list) and len(r["icl_indices"]) == 2 else "")),
    ("repeated-text accuracy", lambda r: _num(r["repeat_accuracy"], ".4f")),
    ("induction accuracy", lambda r: _num(r["induction_accuracy"], ".4f")),
    *((f"best {m.title} head", lambda r, k=m.best: _head(r[k])) for m in HEAD_METRICS.values() if m.best),
    ("parameters", lambda r: _count(r["n_params"])),
    ("tokens seen", lambda r: _count(r["tokens_seen"])),
    ("steps", lambda r: _num(r["steps"], "d")),
    ("wall time", lambda r: _seconds(r["seconds"])),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: one column per run, one line per metric (metrics no run has are left out)."""
    if not rows:
        raise CompareError("nothing to compare")
    header = ["", *[r["name"] for r in rows]]
    body = []
    for label, fn in LINES:
        cells = [fn(r) for r in rows]
        if any(c not in ("-", "") for c in cells):
            body.append([label, *cells])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(line) for line in body)])

"""Everything a report needs from one run directory: config, metrics log, and the attention
patterns of every checkpoint on one fixed sample sequence."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, checkpoint_step, list_checkpoints
from ..errors import UserError
from ..evaluation import load_model, load_run_config
from ..metrics.tracking import read_records

SAMPLE_SEED = 4_000_037


class ReportError(UserError):
    pass


@dataclass
class Sample:
    """One sequence, its token labels and ``{step: {layer: pattern[head, q, k]}}``."""

    kind: str  # "repeat" or the task's name
    title: str
    tokens: list[int]
    labels: list[str]
    patterns: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return sorted(self.patterns)


@dataclass
class RunData:
    run_dir: Path
    name: str
    cfg: Any
    records: list[dict]
    summary: dict
    samples: list[Sample]
    notes: list[str]

    @property
    def full(self) -> list[dict]:
        """Full-evaluation records (the ones with the extra measurements)."""
        return [r for r in self.records if r.get("full")]

    def last_with(self, key: str) -> dict | None:
        for r in reversed(self.records):
            if r.get(key) is not None:
                return r
        return None

    def phase(self) -> dict:
        """``metrics.phase.phase_from_run`` of this run's records and its dense tracked curves
        (``tracking.jsonl``, when the run tracked them)."""
        from ..metrics.phase import phase_from_run
        from ..metrics.tracking import read_tracking

        return phase_from_run(self.records, read_tracking(self.run_dir), extra=[self.headline])

    @property
    def headline(self) -> str:
        """The metric the run's task calls its headline (registry.TASKS)."""
        from ..registry import TASKS

        spec = TASKS.get(getattr(self.cfg.data, "kind", "repeat"))
        return spec.headline if spec else "induction_accuracy"


def repeat_sample(cfg) -> Sample:
    """``[BOS] + r + r + ...``, a little over two repeats of ``period_min`` tokens."""
    from ..data.synthetic import RepeatedTokens

    m, d = cfg.model, cfg.data
    bos = getattr(d, "bos", True)
    off = 1 if bos else 0
    period = int(getattr(d, "period_min", None) or max(2, (m.n_ctx - off) // 3))
    period = max(1, min(period, (m.n_ctx - off) // 2))
    length = min(m.n_ctx, off + 2 * period + max(2, period // 2))
    gen = RepeatedTokens(m.vocab_size, length, period, period, bos, "batch", "cpu", seed=SAMPLE_SEED)
    toks = gen.sample(1).tokens[0].tolist()
    labels = ["BOS" if (bos and i == 0) else str(t) for i, t in enumerate(toks)]
    return Sample("repeat", f"repeated random tokens (period {period})", toks, labels)


def task_sample(cfg) -> tuple[Sample | None, str | None]:
    """The sequence the run's task draws attention on (``TaskSpec.sample``: a text run's first
    validation sequence, an MQAR sequence), or ``(None, reason)`` when its data cannot be loaded;
    ``(None, None)`` for a task without one (repeated tokens: :func:`repeat_sample` serves)."""
    from ..registry import TASKS

    spec = TASKS[cfg.data.kind]
    if spec.sample is None:
        return None, None
    try:
        title, toks, labels = spec.sample(cfg)
    except UserError as exc:
        return None, f"{spec.name} sample not shown: {exc}"
    return Sample(spec.name, title, [int(t) for t in toks], labels), None


@torch.no_grad()
def compute_patterns(cfg, run_dir: Path, samples: list[Sample], max_checkpoints: int = 40) -> list[str]:
    notes = []
    cks = list_checkpoints(run_dir)
    if len(cks) > max_checkpoints:  # keep the first, the last and evenly spaced ones between
        idx = np.unique(np.linspace(0, len(cks) - 1, max_checkpoints).round().astype(int))
        notes.append(f"attention shown at {len(idx)} of {len(cks)} checkpoints")
        cks = [cks[i] for i in idx]
    for ck in cks:
        try:
            model = load_model(cfg, ck, "cpu")
        except CheckpointError as exc:
            notes.append(f"skipped checkpoint: {exc}")
            continue
        if not model.attention_layers:
            continue
        for s in samples:
            pats = model.patterns(torch.tensor([s.tokens], dtype=torch.long))
            s.patterns[checkpoint_step(ck)] = {l: p[0].float().numpy() for l, p in pats.items()}
    return notes


def load_run_data(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    records = read_records(run_dir)
    if not records:
        raise ReportError(f"{run_dir} has an empty metrics.jsonl (nothing to report yet)")
    summary = {}
    notes: list[str] = []
    if (run_dir / "summary.json").exists():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a run still going has none; a damaged one is left out
            summary = {}
        if not isinstance(summary, dict):
            summary = {}
        if not summary:
            notes.append("summary.json is unreadable: final values taken from metrics.jsonl")
    samples = [repeat_sample(cfg)]  # every model is shown on repeated tokens, and on its task's sample
    s, why = task_sample(cfg)
    if s is not None:
        samples.insert(0, s)
    elif why:
        notes.append(why)
    notes += compute_patterns(cfg, run_dir, samples)
    if not list_checkpoints(run_dir):
        notes.append("no checkpoints: attention grids not shown")
    name = getattr(cfg, "name", None) or run_dir.name
    return RunData(run_dir, str(name), cfg, records, summary, samples, notes)

"""Cheap on-device tracking of the phase-change curves every ``train.track_every`` steps.

Every ``track_every`` optimizer steps :meth:`Tracker.track` measures four curves on the device,
under ``torch.no_grad`` and ``model.eval()`` (the previous mode is restored):

* ``previous_token``: best-head previous-token score (``heads.previous_token_score``, max over
  every head of every attention layer),
* ``prefix_matching``: best-head prefix-matching score (``heads.prefix_matching_score``),
* ``induction_loss``: mean loss over the induction predictions (``induction.induction_loss``),
* ``icl_score``: ``loss[late] - loss[early]`` of the loss-by-position curve (``icl.icl_indices``).

Each curve has its **own** small fixed held-out batch (``SEQUENCES[curve]`` sequences, periods
drawn per sequence from the training range) from its own ``RepeatedTokens`` generator, seeded
``train.seed + SEED_OFFSETS[curve]``: distinct from the training data (``train.seed``), from the
evaluation set (``train.seed + EVAL_SEED_OFFSET``) and above every OOD seed
(``ood.OOD_SEED + period or length``), and independent of the step, so a resumed run rebuilds the
same batches. The two head scores come from one forward pass with attention patterns over both
head batches, the two losses from one fast (no-pattern) pass over both loss batches.

Values go into a preallocated device tensor ``values[row, curve]``; nothing is read back to the
host inside the training loop. :meth:`Tracker.flush`, called at the evaluation points (where the
trainer already synchronises) and at the end, copies the new rows to the host in one transfer and
appends them to ``tracking.jsonl``: one record per tracked step,
``{"step", "previous_token", "prefix_matching", "induction_loss", "icl_score"}`` (null where a
value is not finite, e.g. the head scores of a model without attention).

Tracking needs repeated-token data; for other tasks (``data.kind = "text"``) or
``track_every = 0`` the tracker is off and every method is a no-op.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..models.mode import eval_mode
from ..config import Config
from ..data.synthetic import RepeatBatch, RepeatedTokens
from ..errors import UserError
from .heads import prefix_matching_score, previous_token_score
from .icl import icl_indices
from .induction import induction_loss, loss_by_position

#: the tracked curves, in the column order of :attr:`Tracker.values`
CURVES = ("previous_token", "prefix_matching", "induction_loss", "icl_score")
#: curve -> offset added to ``train.seed`` for its held-out generator (the evaluation set uses
#: 1_000_003, the OOD sets 2_000_003 + P; all of these are larger, so no batch is shared)
SEED_OFFSETS = {"previous_token": 3_000_017, "prefix_matching": 3_000_029,
                "induction_loss": 3_000_047, "icl_score": 3_000_061}
#: held-out sequences per curve. The head scores and the induction loss average ~50 predictions
#: per sequence: 8 keep their point-to-point noise well under 1% of the change. The ICL score
#: uses two predictions per sequence, and mid-change some sequences are predicted and others
#: not, so it gets 24 (with 8, seed 2's change step came out 17 steps later than with 24).
#: The pattern pass (head scores) is the expensive one; docs/metrics.md has the overhead.
SEQUENCES = {"previous_token": 8, "prefix_matching": 8, "induction_loss": 8, "icl_score": 24}
#: decimals kept in tracking.jsonl
ROUND = 5


class Tracker:
    """Per-run tracker of :data:`CURVES`; owns its generators, batches and device buffer."""

    def __init__(self, cfg: Config, device: torch.device | str, sequences: dict[str, int] | None = None,
                 enabled: bool | None = None):
        t, m, d = cfg.train, cfg.model, cfg.data
        if enabled is None:  # the curves are measured on repeated tokens: the repeat task's
            enabled = d.kind == "repeat"
        self.every = t.track_every if enabled else 0
        self.bos = getattr(d, "bos", True)
        self.steps: list[int] = []  # tracked steps, known on the host without reading the device
        self.records: list[dict[str, Any]] = []  # rows already copied to the host
        self.generators: dict[str, RepeatedTokens] = {}
        self.batches: dict[str, RepeatBatch] = {}
        if not self.enabled:
            self.values = torch.empty(0, len(CURVES), device=device)
            return
        for name in CURVES:
            gen = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos, "sequence",
                                 device, seed=t.seed + SEED_OFFSETS[name])
            self.generators[name] = gen
            self.batches[name] = gen.sample((sequences or SEQUENCES)[name])
        self.early, self.late = icl_indices(m.n_ctx)
        pt, pm, il, icl = (self.batches[c] for c in CURVES)
        self._head_tokens = torch.cat([pt.tokens, pm.tokens])  # [n_pt + n_pm, n_ctx]
        self._loss_tokens = torch.cat([il.tokens, icl.tokens])  # [n_il + n_icl, n_ctx]
        #: ``[t.steps // every, len(CURVES)]`` on the device, row k = the k-th tracked step
        self.values = torch.full((t.steps // self.every, len(CURVES)), float("nan"), device=device)

    @property
    def enabled(self) -> bool:
        return self.every > 0

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def measure(self, model) -> torch.Tensor:
        """``[len(CURVES)]`` float tensor on the model's device (no host synchronisation)."""
        with eval_mode(model):
            pats = model.patterns(self._head_tokens)  # {layer: [n_pt + n_pm, head, q, k]}
            logits = model(self._loss_tokens)  # [n_il + n_icl, n_ctx, vocab]
        pt, pm, il, icl = (self.batches[c] for c in CURVES)
        n, k = pt.tokens.shape[0], il.tokens.shape[0]
        nan = torch.full((), float("nan"), device=logits.device)
        prev = [previous_token_score(p[:n], self.bos) for p in pats.values()]  # each [head]
        pref = [prefix_matching_score(p[n:], pm.periods, self.bos) for p in pats.values()]
        best_prev = torch.cat(prev).max() if prev else nan
        best_pref = torch.cat(pref).max() if pref else nan
        ind_loss = induction_loss(logits[:k], il.tokens, il.induction_mask)
        curve = loss_by_position(logits[k:], icl.tokens)  # [n_ctx - 1]
        icl_score = curve[self.late] - curve[self.early]
        return torch.stack([best_prev, best_pref, ind_loss, icl_score]).float()

    def track(self, model, step: int) -> None:
        """Measure into the next row of :attr:`values` when ``step`` is a multiple of ``every``."""
        if not self.enabled or step % self.every or len(self.steps) >= self.values.shape[0]:
            return
        self.values[len(self.steps)] = self.measure(model)
        self.steps.append(step)

    # ------------------------------------------------------------------ host side
    def flush(self, path: Path | None = None) -> list[dict[str, Any]]:
        """Copy the rows tracked since the last flush to the host (one transfer; call it only where
        the caller synchronises anyway), append them to :attr:`records` and, when ``path`` is
        given, to that JSON-lines file. Returns the new records."""
        done = len(self.records)
        if not self.enabled or done == len(self.steps):
            return []
        rows = self.values[done:len(self.steps)].cpu().tolist()
        new = [{"step": s, **{c: _clean(v) for c, v in zip(CURVES, row)}}
               for s, row in zip(self.steps[done:], rows)]
        self.records.extend(new)
        if path is not None:
            with open(path, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in new)
        return new

    def state_dict(self) -> dict[str, Any]:
        """The generators' states (the batches are drawn at construction from the fixed seeds),
        the tracked steps, the device buffer (a host copy: call it where the caller synchronises)
        and how many rows were flushed (the trainer restores :attr:`records` from tracking.jsonl)."""
        return {"generators": {c: g.state_dict() for c, g in self.generators.items()},
                "steps": list(self.steps), "values": self.values.detach().cpu().clone(),
                "flushed": len(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for c, g in self.generators.items():
            g.load_state_dict(state["generators"][c])
        if "values" in state:  # states saved before the buffer was part of them hold generators only
            if tuple(state["values"].shape) != tuple(self.values.shape):
                raise ValueError(f"tracker buffer of shape {tuple(state['values'].shape)} does not fit "
                                 f"{tuple(self.values.shape)}")
            self.values = state["values"].to(self.values.device).clone()
            self.steps = [int(s) for s in state["steps"]]


def _clean(x: float) -> float | None:
    return round(x, ROUND) if math.isfinite(x) else None


def read_tracking(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/tracking.jsonl`` (``[]`` when the run did not track)."""
    path = Path(run_dir) / "tracking.jsonl"
    if not path.exists():
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def read_records(run_dir: Path) -> list[dict]:
    """The evaluation records of ``run_dir/metrics.jsonl``; an unfinished last line (a run still
    writing) is skipped, anything else unreadable is a :class:`UserError` (one line)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == 0:
                raise UserError(f"{path}: line {i + 1} is not JSON") from None
            continue  # a run still writing its last line
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise UserError(f"{path}: line {i + 1} is not a metrics record (no integer 'step')")
        out.append(rec)
    return out

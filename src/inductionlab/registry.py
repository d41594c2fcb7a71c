"""Registries of the extension points that configs name (SAELens style: each entry owns its
config dataclass). This module imports nothing heavy, so ``config.py`` can read it while the
entries themselves live beside their code and register on import:

* ``TASKS``: ``data.kind`` -> :class:`TaskSpec` (``tasks/``; the built-ins are registered when
  ``inductionlab`` is imported).
* the mixers (``model.layers``) and per-head metrics have registries of their own in
  ``models/registry.py`` and ``metrics/heads.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class TaskSpec:
    """What a task is to the rest of inductionlab.

    ``config``: the dataclass of its ``[data]`` section (a subclass of ``config.DataConfig``; its
    ``validate(cfg)`` checks the whole config for this task). ``factory(cfg, device) -> Task``
    builds the task of one run (``tasks/base.py``: training batches, evaluation, analysis, its
    generators' state). ``headline``: the metric of ``summary.json["headline"]``, the progress
    bar and early stopping (``train.target_accuracy``), better when higher iff
    ``higher_is_better``; ``headline_range`` its natural range. (Its per-head scores are every
    registered score whose probe its evaluation offers: ``metrics/heads.py``.) ``prepare(cfg)``: run before the
    model is built (text: sets ``model.vocab_size`` from the tokenizer); ``fingerprint(cfg)``:
    content hashes a resumed run must match (text: corpus and tokenizer); ``sample(cfg)``:
    ``(title, tokens[pos], labels)`` of the sequence the report draws attention on.
    ``phase_tracking``: whether ``train.track_every`` applies (repeated-token curves)."""

    name: str
    config: type
    factory: Callable[..., Any]
    headline: str
    higher_is_better: bool = True
    headline_range: tuple[float | None, float | None] = (0.0, 1.0)
    description: str = ""
    prepare: Callable[[Any], None] | None = None
    fingerprint: Callable[[Any], dict[str, str]] | None = None
    sample: Callable[[Any], Any] | None = None
    phase_tracking: bool = False

    def reached(self, value: float, target: float) -> bool:
        """Whether a headline ``value`` has reached ``target`` in this task's direction."""
        return value >= target if self.higher_is_better else value <= target


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` under ``spec.name`` (a task's file calls this once)."""
    TASKS[spec.name] = spec
    return spec

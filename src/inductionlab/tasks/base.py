"""What the training loop, ``eval``, ``compare`` and the report need from a task.

A task is one file in this package: its ``[data]`` config dataclass (a subclass of
``config.DataConfig`` with a ``validate(cfg)``), a class following :class:`Task`, and one
``register_task(TaskSpec(...))`` call (``registry.py`` documents the spec's fields); then add the
file to the imports of ``tasks/__init__.py``. docs/architecture.md has the recipe.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..config import Config
from ..registry import TASKS, TaskSpec


class Task(Protocol):
    """One run's data, evaluation and analysis; owns every generator it draws from."""

    spec: TaskSpec

    def train_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens[batch, pos], loss_mask[batch, pos-1] or None)``: the next training batch and,
        with ``train.loss_on = "induction"``, which predictions the loss covers."""

    def evaluate(self, model) -> dict[str, Any]:
        """Held-out metrics (the headline among them) and the per-head scores of the probes it offers."""

    def analyze(self, model) -> dict[str, Any]:
        """The slower measurements run at the log-spaced full evaluations."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def task_spec(cfg_or_kind: Config | str) -> TaskSpec:
    """The registered spec of a config's task (or of a ``data.kind`` name)."""
    kind = cfg_or_kind if isinstance(cfg_or_kind, str) else cfg_or_kind.data.kind
    return TASKS[kind]


def prepare(cfg: Config) -> tuple[Config, Any]:
    """``(cfg', resources)``: the task's preparation before the model is built (a text task loads
    its corpus and tokenizer and returns a copy of ``cfg`` whose ``model.vocab_size`` is the
    tokenizer's); ``cfg`` itself is not changed. ``resources`` go to :func:`make_task`."""
    spec = task_spec(cfg)
    return spec.prepare(cfg) if spec.prepare else (cfg, None)


def make_task(cfg: Config, device: torch.device, resources: Any = None) -> Task:
    """The task of ``cfg`` on ``device`` (``resources`` from :func:`prepare`, if any)."""
    spec = task_spec(cfg)
    return spec.factory(cfg, device) if resources is None else spec.factory(cfg, device, resources)


def headline_record(cfg: Config, values: dict[str, Any]) -> dict[str, Any]:
    """``{"metric", "value", "higher_is_better"}``: the ``summary.json["headline"]`` of a run."""
    spec = task_spec(cfg)
    return {"metric": spec.headline, "value": values.get(spec.headline), "higher_is_better": spec.higher_is_better}

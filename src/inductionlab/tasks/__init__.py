"""Tasks: what a run trains on and how it is scored (registry.TASKS; a new task = one file here
plus its import below). tasks/base.py documents the protocol."""

from . import mqar, repeat, text  # noqa: F401 - each registers its TaskSpec
from .base import Task, headline_record, make_task, prepare, task_spec
from .mqar import MQARTask
from .repeat import RepeatTask
from .text import TextTask

__all__ = ["Task", "make_task", "prepare", "task_spec", "headline_record", "RepeatTask", "TextTask", "MQARTask"]

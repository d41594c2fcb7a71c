"""Checkpoints: weights in safetensors, metadata (config, step, RNG/optimizer state) beside it.

``step_000123.safetensors`` holds the model weights (no pickle); ``step_000123.json`` holds the
config and step; ``step_000123.state.pt`` (final checkpoint only) holds optimizer, scheduler, gradient-scaler and
data-generator state for a future exact resume (to be loaded with ``weights_only=True``). Files are written to a temporary name and renamed, so a killed run never
leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import UserError


class CheckpointError(UserError):
    pass


def atomic_write(path: Path, write) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it and rename it to
    ``path``: readers see the old file or the whole new one, never a part. The temporary file is
    removed if writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(run_dir: Path, step: int, model, meta: dict[str, Any], state: dict[str, Any] | None = None) -> Path:
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    stem = ckdir / f"step_{step:06d}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(stem.with_suffix(".safetensors"), lambda fh: fh.write(save(tensors)))
    if state is not None:
        atomic_write(Path(f"{stem}.state.pt"), lambda fh: torch.save(state, fh))
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"step": step, **meta}, indent=1))
    return stem.with_suffix(".safetensors")


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.safetensors")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, by step (files not named ``step_N.safetensors`` are ignored)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("step_*.safetensors")
             if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(Path(path).name).group(1))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None

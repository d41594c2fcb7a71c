"""Checkpoints: weights in safetensors, training state beside them, a JSON sidecar written last.

The files of the checkpoint at step N (in ``checkpoints/``, resume points also in
``checkpoints/periodic/``):

* ``step_N.safetensors``: the model weights (safetensors: no pickle, nothing executable);
* ``step_N.state.pt`` (resume points only: the periodic ones and the final one): optimizer,
  scheduler, gradient scaler, every generator, the tracker buffer, the loop counters and the
  metrics-log offsets (``torch.save`` format, read back only with ``weights_only=True``:
  tensors and plain containers, nothing executed);
* ``step_N.json``: the sidecar: step, config and model facts, plus ``files`` (size and sha256 of
  each file above) and ``checksum`` (sha256 of the sidecar's own content).

Write protocol (:func:`save_checkpoint`): an old sidecar of step N is removed first, each file
goes to a temporary name beside its real one, is fsynced and renamed, and the sidecar is written
last the same way. So a checkpoint is *complete* exactly when its sidecar exists; a kill at any
moment leaves either a complete checkpoint or files without a sidecar (ignored, and cleaned up by
a resumed run). A complete checkpoint whose files no longer match their sidecar, or whose sidecar
was edited, was damaged or modified after it was written: every reader refuses it with one line
(:class:`CheckpointError`). See docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .errors import UserError

#: sidecar layout version (``format`` in every sidecar written by this code)
SIDECAR_FORMAT = 1
#: subfolder of ``checkpoints/`` holding the periodic resume points
PERIODIC = "periodic"
#: test hook: seconds to sleep inside the write of every checkpoint file (after its bytes are in
#: the temporary file, before the rename), so a test can kill a run in the middle of a write
DELAY_ENV = "INDUCTIONLAB_TEST_CHECKPOINT_DELAY"


class CheckpointError(UserError):
    pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------- writing
def _digest(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _checksum(body: dict[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def state_path(stem: Path) -> Path:
    return Path(f"{stem}.state.pt")


def sidecar_path(path: Path) -> Path:
    """``step_N.json`` for any file of the checkpoint (weights, state or the sidecar itself)."""
    path = Path(path)
    if path.suffix == ".json":
        return path
    return Path(str(path).removesuffix(".state.pt").removesuffix(".safetensors") + ".json")


def _writer(data: bytes, delay: float):
    def write(fh):
        fh.write(data)
        if delay:  # test hook (DELAY_ENV): hold the temporary file open, complete but not renamed
            fh.flush()
            time.sleep(delay)
    return write


def save_checkpoint(run_dir: Path, step: int, model, meta: dict[str, Any], state: dict[str, Any] | None = None,
                    subdir: str = "") -> Path:
    """Write the checkpoint of ``step`` into ``run_dir/checkpoints[/subdir]`` (module docstring:
    atomic files, sidecar last) and return the weights' path. ``state`` makes it a resume point."""
    ckdir = Path(run_dir) / "checkpoints" / subdir if subdir else Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    stem = ckdir / f"step_{step:06d}"
    sidecar = stem.with_suffix(".json")
    sidecar.unlink(missing_ok=True)  # an older copy of this step stops being complete first
    delay = float(os.environ.get(DELAY_ENV) or 0)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blobs = {"safetensors": (stem.with_suffix(".safetensors"), save(tensors))}
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        blobs["state"] = (state_path(stem), buf.getvalue())
    else:
        state_path(stem).unlink(missing_ok=True)
    files = {}
    for kind, (path, data) in blobs.items():
        atomic_write(path, _writer(data, delay))
        files[kind] = {"name": path.name, **_digest(data)}
    _fsync_dir(ckdir)
    body = {"step": step, **meta, "files": files, "format": SIDECAR_FORMAT}
    body["checksum"] = _checksum(json.loads(json.dumps(body)))  # as a reader will see it
    atomic_write(sidecar, _writer(json.dumps(body, indent=1).encode(), delay))
    _fsync_dir(ckdir)
    return stem.with_suffix(".safetensors")


def remove_checkpoint(stem: Path) -> None:
    """Delete a checkpoint, sidecar first (so a kill in between leaves an incomplete one)."""
    stem = Path(stem)
    for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors"), state_path(stem)):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- listing
CHECKPOINT_NAME = re.compile(r"step_(\d+)\.safetensors")
SIDECAR_NAME = re.compile(r"step_(\d+)\.json")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's analysis checkpoints (``checkpoints/step_N.safetensors``, by step; files with
    other names and the resume points in ``checkpoints/periodic/`` are not listed)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("step_*.safetensors")
             if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(Path(path).name).group(1))


def complete_stems(ckdir: Path) -> list[Path]:
    """Stems (``.../step_N``) of the checkpoints in ``ckdir`` that have a sidecar, by step."""
    found = [p for p in Path(ckdir).glob("step_*.json") if SIDECAR_NAME.fullmatch(p.name)]
    return [p.with_suffix("") for p in sorted(found, key=lambda p: int(SIDECAR_NAME.fullmatch(p.name).group(1)))]


# --------------------------------------------------------------------------- reading
def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of a checkpoint (``path``: the sidecar or any file of the checkpoint), its own
    checksum verified when it has one (sidecars written before checksums existed have none)."""
    sidecar = sidecar_path(path)
    try:
        body = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {sidecar.with_suffix('')} is incomplete (no sidecar {sidecar.name})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {sidecar} is unreadable: {_first_line(exc)}") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"checkpoint metadata {sidecar} is unreadable: not a JSON object")
    if "checksum" in body and body["checksum"] != _checksum(body):
        raise CheckpointError(f"checkpoint metadata {sidecar} was modified after it was written (checksum mismatch)")
    return body


def _read_verified(path: Path, kind: str, body: dict[str, Any]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    want = (body.get("files") or {}).get(kind)
    if isinstance(want, dict) and (len(data) != want.get("bytes") or _digest(data)["sha256"] != want.get("sha256")):
        raise CheckpointError(f"cannot read checkpoint {path}: its size or sha256 does not match its sidecar "
                              f"{sidecar_path(path).name} (truncated, damaged or modified)")
    return data


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights of ``step_N.safetensors``, checked against the sidecar's size and sha256 when the
    sidecar lists them."""
    path = Path(path)
    body = read_sidecar(path) if sidecar_path(path).exists() else {}
    data = _read_verified(path, "safetensors", body)
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None


def load_state(path: Path) -> dict[str, Any]:
    """The training state ``step_N.state.pt`` of a resume point: size and sha256 checked against the
    sidecar (which must list them), then ``torch.load(weights_only=True)`` on CPU, which accepts
    tensors and plain containers only and refuses anything else before it runs."""
    path = Path(path)
    body = read_sidecar(path)
    if "state" not in (body.get("files") or {}):
        raise CheckpointError(f"checkpoint {path} is not listed in its sidecar (not a resume point)")
    data = _read_verified(path, "state", body)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refusing training state {path}: it holds more than tensors and plain containers "
                              "(the safe loader, weights_only=True, rejected it; nothing was executed)") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad magic, ... all mean "unusable"
        raise CheckpointError(f"cannot read training state {path}: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read training state {path}: not a dict")
    return state


def verify_checkpoint(stem: Path) -> dict[str, Any]:
    """Check every file a complete checkpoint's sidecar lists (size and sha256) without loading
    anything; return the sidecar. :class:`CheckpointError` if any is missing or differs."""
    stem = Path(stem)
    body = read_sidecar(stem.with_suffix(".json"))
    for kind, entry in (body.get("files") or {}).items():
        path = stem.with_suffix(".safetensors") if kind == "safetensors" else state_path(stem)
        if not isinstance(entry, dict) or entry.get("name") != path.name:
            raise CheckpointError(f"checkpoint metadata {stem.with_suffix('.json')} lists an unexpected file {entry!r}")
        _read_verified(path, kind, body)
    return body


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The run directory as a resumable record: what a run writes, when it checkpoints, and how a
killed run continues bit for bit (docs/reliability.md).

* :class:`CheckpointPolicy`: a periodic resume point every ``train.checkpoint_every`` steps and/or
  ``train.checkpoint_minutes`` minutes, the newest ``train.keep_last`` kept in
  ``checkpoints/periodic/`` while the run goes on (the analysis checkpoints in ``checkpoints/``
  are never pruned; a finished run's final checkpoint holds the full state, so the periodic
  folder is removed at the end).
* :class:`LoopState`: the loop's own counters (step, running-loss accumulator, first non-finite
  step, skipped steps, early stop) saved with every resume point.
* :class:`RunWriter`: opens a run directory fresh or at its newest complete resume point
  (checks the config, the code version and the data, then truncates metrics.jsonl and
  tracking.jsonl back to that step and removes what the killed process left after it), appends
  the metrics log, writes resume points and refuses to write one after a non-finite loss.
* The ``--seeds`` plan (``seeds.json``), so a killed multi-seed run can be resumed as a whole.

A resume point's state holds ``{name: part.state_dict()}`` for the parts the trainer passes
(optimizer, scheduler, grad scaler, task generators, tracker) plus ``loop``, ``logs`` and
``compat``; everything else a run needs is rebuilt from the config (model init, held-out sets,
tracker batches: drawn from fixed seeds, so redrawing them is exact).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import (
    PERIODIC,
    CheckpointError,
    complete_stems,
    load_state,
    load_weights,
    remove_checkpoint,
    save_checkpoint,
    state_path,
    verify_checkpoint,
)
from .config import Config, ConfigError, config_from_dict
from .configfile import dump_toml, load_config
from .errors import UserError
from .registry import TASKS

#: layout version of the resume state (``compat.format``); a state of another format is refused
STATE_FORMAT = 1
#: config keys a resumed run may change (``--resume RUN --set KEY=VALUE``): they do not change what
#: is computed (threads may change the last bits of CPU float sums: docs/reliability.md)
OPERATIONAL = ("name", "description", "train.progress", "train.checkpoint_every", "train.checkpoint_minutes",
               "train.keep_last", "train.skip_nonfinite", "train.threads", "data.cache_dir", "data.data_dir")
#: the lines of metrics.jsonl / tracking.jsonl that are timing, not results (docs/reliability.md)
TIMING_FIELDS = ("seconds",)
SUMMARY_TIMING_FIELDS = ("seconds", "eval_seconds")


class RunError(UserError):
    """A run cannot start or continue; the message is one line for the user."""


# --------------------------------------------------------------------------- config identity
def _flat(cfg: Config | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.d_model": 64, "model.conv.kernel": 5, ...}``: subtables flattened too."""
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(a: Config | dict[str, Any], b: Config | dict[str, Any]) -> list[str]:
    """Keys (``section.key``) whose values differ, operational keys excepted."""
    fa, fb = _flat(a), _flat(b)
    return sorted(k for k in fa.keys() | fb.keys() if k not in OPERATIONAL and fa.get(k) != fb.get(k))


def require_same_config(saved: Config | dict[str, Any], cfg: Config | dict[str, Any], where: str,
                        what: str = "the config differs from its config.toml in") -> None:
    """Raise :class:`RunError` naming the keys, operational ones excepted, in which ``cfg`` differs
    from ``saved`` (what a resumed run may not change)."""
    diff = config_diff(saved, cfg)
    if diff:
        raise RunError(f"cannot resume {where}: {what} {', '.join(diff)} "
                       f"(a resumed run may change only {', '.join(OPERATIONAL)})")


def config_hash(cfg: Config | dict[str, Any]) -> str:
    """sha256 of the config without its operational keys (what a resume must not change)."""
    flat = {k: v for k, v in _flat(cfg).items() if k not in OPERATIONAL}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def data_fingerprint(cfg: Config, resources: Any = None) -> dict[str, str]:
    """Content hashes of the data a task reads from files (a text run's corpus and tokenizer:
    its ``TaskSpec.fingerprint``); empty for generated data."""
    spec = TASKS[cfg.data.kind]
    return spec.fingerprint(cfg, resources) if spec.fingerprint else {}


def compat_record(cfg: Config, resources: Any = None) -> dict[str, Any]:
    return {"format": STATE_FORMAT, "inductionlab": __version__, "torch": str(torch.__version__),
            "config_sha256": config_hash(cfg), "data": data_fingerprint(cfg, resources)}


def _check_compat(saved: Any, now: dict[str, Any], where: str) -> None:
    if not isinstance(saved, dict):
        raise RunError(f"cannot resume {where}: its checkpoint has no compatibility record")
    if saved.get("format") != now["format"] or saved.get("inductionlab") != now["inductionlab"]:
        raise RunError(f"cannot resume {where}: its checkpoint was written by inductionlab {saved.get('inductionlab')} "
                       f"(state format {saved.get('format')}), this is inductionlab {now['inductionlab']} "
                       f"(format {now['format']}); resume it with the version that wrote it")
    if saved.get("config_sha256") != now["config_sha256"]:
        raise RunError(f"cannot resume {where}: its checkpoint was written for a different config (config hash differs)")
    if saved.get("data") != now["data"]:
        raise RunError(f"cannot resume {where}: the training data (corpus or tokenizer) changed since its checkpoint")
    if saved.get("torch") != now["torch"]:
        sys.stderr.write(f"inductionlab: note: {where} was checkpointed with torch {saved.get('torch')}, this is "
                         f"torch {now['torch']}: the resumed run may differ in the last bits\n")


# --------------------------------------------------------------------------- the loop's counters
@dataclass
class LoopState:
    """Counters of the training loop; :meth:`state_dict` goes into every resume point."""

    step: int
    loss_sum: torch.Tensor  # device scalar: sum of the training losses since the last evaluation
    first_bad: torch.Tensor  # device int64 scalar: first step with a non-finite loss (0 = none)
    loss_count: int = 0
    skipped: int = 0  # non-finite steps skipped (train.skip_nonfinite)
    reached_at: int | None = None
    done: bool = False  # stopped early at train.target_accuracy
    seconds: float = 0.0  # wall seconds of training before this process (timing only)
    eval_seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl so far (not saved)

    @classmethod
    def fresh(cls, device: torch.device) -> "LoopState":
        return cls(0, torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    def state_dict(self, seconds: float) -> dict[str, Any]:
        """The counters, with ``seconds`` of training so far (timing only)."""
        return {"step": self.step, "loss_sum": self.loss_sum.detach().cpu().clone(),
                "first_bad": self.first_bad.detach().cpu().clone(), "loss_count": self.loss_count,
                "skipped": self.skipped, "reached_at": self.reached_at, "done": self.done,
                "seconds": seconds, "eval_seconds": self.eval_seconds}

    @classmethod
    def from_state(cls, s: dict[str, Any], device: torch.device, records: list[dict[str, Any]]) -> "LoopState":
        return cls(int(s["step"]), s["loss_sum"].to(device), s["first_bad"].to(device), int(s["loss_count"]),
                   int(s["skipped"]), s["reached_at"], bool(s["done"]), float(s["seconds"]),
                   float(s["eval_seconds"]), records)


class CheckpointPolicy:
    """When the loop writes a periodic resume point, and how many it keeps."""

    def __init__(self, t, clock=time.monotonic):
        self.every, self.seconds, self.keep = t.checkpoint_every, t.checkpoint_minutes * 60, t.keep_last
        self.clock = clock
        self.last = clock()

    @property
    def enabled(self) -> bool:
        return bool(self.every or self.seconds)

    def due(self, step: int) -> bool:
        if self.every and step % self.every == 0:
            return True
        return bool(self.seconds) and self.clock() - self.last >= self.seconds

    def written(self) -> None:
        self.last = self.clock()

    def prune(self, run_dir: Path) -> None:
        """Keep the newest ``keep_last`` periodic resume points (sidecar deleted first)."""
        stems = complete_stems(Path(run_dir) / "checkpoints" / PERIODIC)
        for stem in stems[:-self.keep]:
            remove_checkpoint(stem)


# --------------------------------------------------------------------------- run directory
def prepare_run_dir(out: Path) -> Path:
    out = Path(out)
    if (out / "metrics.jsonl").exists() or (out / "summary.json").exists():
        raise RunError(f"{out} already holds a run; choose another --out, or --resume it (nothing was changed)")
    probe_writable(out)
    return out


def probe_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None


def checkpoint_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(weights, resume point) sizes in bytes, estimated: AdamW keeps two moments per weight."""
    w = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return w, 3 * w + (1 << 16)


def check_free_space(run_dir: Path, cfg: Config, model: torch.nn.Module, analysis_checkpoints: int) -> None:
    """Refuse to start when the checkpoints the run will keep cannot fit (a full disk is found
    before training, not at the first checkpoint)."""
    t = cfg.train
    w, point = checkpoint_bytes(model)
    periodic = t.keep_last + 1 if (t.checkpoint_every or t.checkpoint_minutes) else 0
    need = (periodic + 1) * point + analysis_checkpoints * w
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise RunError(f"not enough free space in {run_dir} for the run's checkpoints: about {need / 2**20:.1f} MiB "
                       f"needed, {free / 2**20:.1f} MiB free (free space, lower train.keep_last or "
                       "train.full_evals, or choose another --out)")


def run_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def holds_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "config.toml").is_file()


def _lock(run_dir: Path):
    """An exclusive lock on ``run_dir/.lock`` for the process's lifetime (released by the OS if it
    is killed); a second process training the same directory is refused."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fh = open(run_dir / ".lock", "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunError(f"{run_dir} is being trained by another process; wait for it or stop it first") from None
    return fh


@dataclass
class ResumePoint:
    step: int
    stem: Path
    sidecar: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    metrics: list[dict[str, Any]]  # metrics.jsonl records up to the step
    tracking: list[dict[str, Any]]  # tracking.jsonl records flushed by then


def resume_stems(run_dir: Path) -> list[Path]:
    """Complete checkpoints with a training state (every periodic one, and the final one), oldest
    first."""
    ck = Path(run_dir) / "checkpoints"
    stems = [s for s in complete_stems(ck) if state_path(s).exists()] + complete_stems(ck / PERIODIC)
    return sorted(stems, key=lambda s: (int(s.name.split("_")[1]), s.parent.name != PERIODIC))


def _log_prefix(path: Path, size: int, lines: int, step: int) -> list[dict[str, Any]]:
    """The records in the first ``size`` bytes of a JSON-lines log, checked against the counts a
    resume point saved."""
    try:
        data = path.read_bytes()[:size] if path.exists() else b""
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != size or data.count(b"\n") != lines or (size and not data.endswith(b"\n")):
        raise RunError(f"{path} does not hold what the checkpoint of step {step} recorded ({size} bytes, "
                       f"{lines} lines): it was shortened or edited; cannot resume")
    try:
        return [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{path} is unreadable before step {step}: {exc}") from None


def find_resume_point(run_dir: Path, cfg: Config, compat: dict[str, Any] | None = None) -> ResumePoint | None:
    """The newest complete resume point of ``run_dir``, verified (hashes, safe load, compatibility,
    logs), or None when the run never wrote one. Changes nothing on disk."""
    stems = resume_stems(run_dir)
    if not stems:
        return None
    stem = stems[-1]
    where = str(run_dir)
    try:
        body = verify_checkpoint(stem)
        state = load_state(state_path(stem))
        weights = load_weights(stem.with_suffix(".safetensors"))
    except CheckpointError as exc:
        raise RunError(f"cannot resume {where}: {exc}") from None
    require_same_config(body.get("config", {}), cfg, where, "its checkpoint was trained with a config that differs in")
    _check_compat(state.get("compat"), compat or compat_record(cfg), where)
    try:
        logs, step = state["logs"], int(state["loop"]["step"])
        metrics = _log_prefix(Path(run_dir) / "metrics.jsonl", logs["metrics_bytes"], logs["metrics_lines"], step)
        tracking = _log_prefix(Path(run_dir) / "tracking.jsonl", logs["tracking_bytes"], logs["tracking_lines"], step)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"cannot resume {where}: checkpoint {stem} has an incomplete state ({exc})") from None
    return ResumePoint(step, stem, body, weights, state, metrics, tracking)


def clean_after(run_dir: Path, step: int) -> None:
    """Remove what a killed process left behind after ``step``: checkpoints of later steps,
    checkpoint files without a sidecar, temporary files; truncation of the logs is the writer's."""
    run_dir = Path(run_dir)
    name = re.compile(r"step_(\d+)\.(safetensors|json|state\.pt)")
    for d in (run_dir / "checkpoints", run_dir / "checkpoints" / PERIODIC):
        if not d.is_dir():
            continue
        complete = {s.name for s in complete_stems(d)}
        for stem in complete_stems(d):
            if int(stem.name.split("_")[1]) > step:
                remove_checkpoint(stem)
        for f in d.iterdir():
            m = name.fullmatch(f.name)
            if (m and (int(m.group(1)) > step or f"step_{m.group(1)}" not in complete)) or \
                    (f.name.startswith("step_") and f.name.endswith(".tmp")):
                f.unlink(missing_ok=True)
    for f in run_dir.glob("*.tmp"):
        if f.name.split(".")[0] in ("config", "summary", "seeds"):
            f.unlink(missing_ok=True)


class MetricsLog:
    """Append-only metrics.jsonl that knows its size (the resume points record it)."""

    def __init__(self, path: Path, size: int = 0):
        self.path = Path(path)
        self.fh = open(self.path, "r+b" if self.path.exists() else "wb")
        self.fh.truncate(size)
        self.fh.seek(size)

    def append(self, record: dict[str, Any]) -> None:
        self.fh.write((json.dumps(record) + "\n").encode())
        self.fh.flush()

    def sync(self) -> int:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def _sync_file(path: Path) -> tuple[int, int]:
    """fsync ``path`` and return (bytes, lines); (0, 0) when it does not exist."""
    if not path.exists():
        return 0, 0
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
        data = fh.read()
    return len(data), data.count(b"\n")


class RunWriter:
    """The run directory of one training process (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: Config, meta: dict[str, Any], resources: Any = None):
        self.run_dir, self.cfg, self.meta = Path(run_dir), cfg, meta
        self.compat = compat_record(cfg, resources)
        self.point: ResumePoint | None = None
        self.summary: dict[str, Any] | None = None  # set when the run had already finished
        self.last_good: int | None = None  # step of the newest complete resume point
        self.metrics: MetricsLog | None = None
        self._lock = None

    @classmethod
    def open(cls, run_dir: Path, cfg: Config, model: torch.nn.Module, meta: dict[str, Any], resume: bool,
             analysis_checkpoints: int, resources: Any = None) -> "RunWriter":
        """A fresh run directory, or (``resume`` and the directory holds a run of this config) the
        run at its newest complete resume point; a finished run is only read (:attr:`summary`).
        ``resources``: what ``tasks.prepare`` returned (the data fingerprint reuses it)."""
        w = cls(run_dir, cfg, meta, resources)
        try:
            return w._open(model, resume, analysis_checkpoints)
        except BaseException:
            w.close()
            raise

    def _open(self, model, resume: bool, analysis_checkpoints: int) -> "RunWriter":
        w, run_dir, cfg = self, self.run_dir, self.cfg
        if resume and holds_run(run_dir):
            try:
                saved = load_config(str(run_dir / "config.toml"))
            except ConfigError as exc:
                raise RunError(f"cannot resume {run_dir}: {exc}") from None
            require_same_config(saved, cfg, str(run_dir))
            if run_finished(run_dir):
                try:
                    w.summary = json.loads((run_dir / "summary.json").read_text())
                except (OSError, ValueError) as exc:
                    raise RunError(f"cannot read {run_dir / 'summary.json'}: {exc}") from None
                return w
            probe_writable(run_dir)
            w._lock = _lock(run_dir)
            w.point = find_resume_point(run_dir, cfg, w.compat)
            clean_after(run_dir, w.point.step if w.point else 0)
            w.last_good = w.point.step if w.point else None
        else:
            prepare_run_dir(run_dir)
            w._lock = _lock(run_dir)
        check_free_space(run_dir, cfg, model, analysis_checkpoints)
        from .checkpoint import atomic_write_text

        atomic_write_text(run_dir / "config.toml", dump_toml(cfg))
        return w

    # ------------------------------------------------------------------ restoring
    def restore(self, model: torch.nn.Module, parts: dict[str, Any], tracker, device: torch.device) -> LoopState:
        """Load the resume point into the freshly built ``model`` and ``parts`` and open the logs
        at its step (truncating what came after); a fresh :class:`LoopState` when there is none."""
        tracking = self.run_dir / "tracking.jsonl"
        p = self.point
        if p is None:
            tracking.unlink(missing_ok=True)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", 0)
            return LoopState.fresh(device)
        try:
            model.load_state_dict(p.weights, strict=True)
            for name, part in parts.items():
                part.load_state_dict(p.state[name])
            loop = LoopState.from_state(p.state["loop"], device, p.metrics)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"cannot resume {self.run_dir}: checkpoint {p.stem} does not fit this run: {first}") from None
        tracker.records = list(p.tracking)
        if tracking.exists():
            os.truncate(tracking, p.state["logs"]["tracking_bytes"])
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", p.state["logs"]["metrics_bytes"])
        return loop

    # ------------------------------------------------------------------ writing
    def append(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)

    def check_finite(self, loop: LoopState, skip_nonfinite: int) -> None:
        """Stop the run (naming the step) if a training loss was not finite. A host sync: call it
        where the loop synchronises anyway (evaluations, checkpoints)."""
        bad = int(loop.first_bad)
        if bad:
            where = (f"the last good checkpoint is step {self.last_good} (--resume continues from it)"
                     if self.last_good is not None else "no checkpoint was written yet (--resume restarts the run)")
            bound = f" (more than train.skip_nonfinite={skip_nonfinite} such steps)" if skip_nonfinite else ""
            hint = "" if skip_nonfinite else " or set train.skip_nonfinite=N to skip up to N such steps"
            raise RunError(f"training loss is not finite (nan/inf) at step {bad}{bound}; stopped: {where}; "
                           f"lower train.lr{hint}")

    def save_resume_point(self, step: int, model, parts: dict[str, Any], loop: LoopState, seconds: float,
                          final: bool = False, policy: CheckpointPolicy | None = None) -> None:
        """Write a resume point for ``step`` (periodic, or the final checkpoint) after syncing the
        logs; a write failure is one line naming the last complete checkpoint."""
        metrics_bytes = self.metrics.sync()
        tracking_bytes, tracking_lines = _sync_file(self.run_dir / "tracking.jsonl")
        state = {name: part.state_dict() for name, part in parts.items()}
        state["loop"] = loop.state_dict(seconds)
        state["logs"] = {"metrics_bytes": metrics_bytes, "metrics_lines": len(loop.records),
                         "tracking_bytes": tracking_bytes, "tracking_lines": tracking_lines}
        state["compat"] = self.compat
        self.save(step, model, state, subdir="" if final else PERIODIC)
        self.last_good = step
        if policy is not None:
            policy.written()
            policy.prune(self.run_dir)

    def save(self, step: int, model, state: dict[str, Any] | None = None, subdir: str = "") -> None:
        try:
            save_checkpoint(self.run_dir, step, model, self.meta, state, subdir=subdir)
        except OSError as exc:
            raise RunError(self.write_failed(exc, f"checkpoint of step {step}")) from None

    def write_failed(self, exc: OSError, what: str) -> str:
        last = f"step {self.last_good}" if self.last_good is not None else "none yet"
        return (f"cannot write the {what} in {self.run_dir}: {exc.strerror or exc}; the last complete resume point "
                f"is {last} (free space, then --resume)")

    def finish(self) -> None:
        """The run is complete (summary written): its final checkpoint holds the full state, so the
        periodic resume points go."""
        shutil.rmtree(self.run_dir / "checkpoints" / PERIODIC, ignore_errors=True)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# --------------------------------------------------------------------------- --seeds
SEED_PLAN = "seeds.json"


def write_seed_plan(out: Path, cfg: Config, seeds: list[int]) -> None:
    from .checkpoint import atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / SEED_PLAN, json.dumps({"seeds": seeds, "config": cfg.to_dict()}, indent=1) + "\n")


def read_seed_plan(out: Path) -> tuple[Config, list[int]] | None:
    path = Path(out) / SEED_PLAN
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        return config_from_dict(d["config"]), [int(s) for s in d["seeds"]]
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise RunError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def is_seeds_dir(path: Path) -> bool:
    path = Path(path)
    return not holds_run(path) and ((path / SEED_PLAN).is_file() or any(path.glob("seed_*/config.toml")))


def seed_config(cfg: Config, seed: int) -> Config:
    c = copy.deepcopy(cfg)
    c.train = dataclasses.replace(c.train, seed=seed)
    from .config import validate

    validate(c)
    return c

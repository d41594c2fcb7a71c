"""The one training loop: AdamW, warmup + cosine/constant schedule, grad clipping, AMP, evals,
checkpoints and a run directory (written through :class:`runstate.RunWriter`).

Design rules: every random stream comes from a generator this trainer owns (model init under a
forked RNG seeded from ``train.seed``, data from the task's own ``torch.Generator``), every
stateful part is saved with each resume point so a killed run continues bit for bit
(docs/reliability.md), and the loop never reads a loss back to the host between evaluation
points and checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .causality import check_causal
from .checkpoint import atomic_write_text
from .config import Config, ConfigError, config_from_dict
from .configfile import apply_overrides, load_config
from .metrics.phase import phase_from_run
from .metrics.tracking import Tracker
from .models import Transformer, build_model
from .schedule import eval_steps, full_metric_steps, lr_factor  # noqa: F401 - part of this module's API
from .tasks import headline_record, make_task, prepare, task_spec
from .runstate import (
    SEED_PLAN,
    CheckpointPolicy,
    LoopState,
    RunError,
    RunWriter,
    require_same_config,
    holds_run,
    prepare_run_dir,  # noqa: F401 - part of this module's API
    probe_writable,
    read_seed_plan,
    run_finished,
    seed_config,
    write_seed_plan,
)


# --------------------------------------------------------------------------- pieces
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"train.device={name} but no CUDA device is available (use train.device=cpu)")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(f"train.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def init_model(cfg: Config, device: torch.device) -> Transformer:
    """Build the model with weights drawn from ``train.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
    return model.to(device)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=t.lr, betas=tuple(t.betas))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernel not available for this device/dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def training_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    tgt = tokens[:, 1:].reshape(-1)
    if mask is None:
        return F.cross_entropy(lg, tgt)
    losses = F.cross_entropy(lg, tgt, reduction="none")
    m = mask.reshape(-1).to(losses.dtype)
    return (losses * m).sum() / m.sum().clamp_min(1)


def default_run_dir(cfg: Config, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{cfg.name}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = Path(f"{base}-{i}")
    return out


#: test hook: comma-separated steps whose training loss is made NaN (tests/test_resume.py)
NAN_STEPS_ENV = "INDUCTIONLAB_TEST_NAN_STEPS"


def _nan_steps() -> set[int]:
    text = os.environ.get(NAN_STEPS_ENV, "")
    return {int(x) for x in text.split(",") if x.strip()}


def _amp(cfg: Config, device: torch.device):
    t = cfg.train
    use_amp = device.type == "cuda" and t.amp != "none"
    amp_dtype = torch.bfloat16 if t.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and t.amp == "fp16")
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext
    return scaler, autocast


# --------------------------------------------------------------------------- training
def train(cfg: Config, out: Path | None = None, progress: bool | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into run directory ``out`` and return the summary dict.

    With ``resume=True`` a directory that already holds a run of this config is continued from its
    newest complete resume point (bit-identical on CPU; docs/reliability.md), and a finished one
    is returned as it is; a directory without a run is trained from the start."""
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    cfg, resources = prepare(cfg)  # a text task: model.vocab_size = the tokenizer's (a copy of cfg)
    model = init_model(cfg, device)
    check_causal(model, cfg.model.vocab_size, cfg.model.n_ctx, device=device)  # CausalityError
    full_steps = full_metric_steps(cfg)
    meta = {"config": cfg.to_dict(), "n_params": model.num_params(), "layers": model.layer_kinds}
    writer = RunWriter.open(out if out is not None else default_run_dir(cfg), cfg, model, meta, resume,
                            analysis_checkpoints=len(full_steps), resources=resources)
    try:
        if writer.summary is not None:  # finished before: nothing to do
            return writer.summary
        return _run(cfg, model, device, writer, full_steps, progress, resources)
    finally:
        writer.close()


def _run(cfg: Config, model: Transformer, device: torch.device, writer: RunWriter, full_steps: set[int],
         progress: bool | None, resources: Any = None) -> dict[str, Any]:
    t = cfg.train
    run_dir = writer.run_dir
    task = make_task(cfg, device, resources)
    spec = task_spec(cfg)
    tracker = Tracker(cfg, device, enabled=spec.phase_tracking)  # phase-change curves every train.track_every steps, on the device
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler, autocast = _amp(cfg, device)
    # everything with a state of its own; a resume point saves and restores exactly these
    parts = {"optimizer": opt, "scheduler": sched, "scaler": scaler, "task": task, "tracker": tracker}
    loop = writer.restore(model, parts, tracker, device)
    policy = CheckpointPolicy(t)
    evals = set(eval_steps(cfg))
    nan_steps = _nan_steps()
    show = t.progress if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=loop.step, desc=cfg.name, unit="step", dynamic_ncols=True, mininterval=0.25)
    start, before = time.perf_counter(), loop.seconds

    def elapsed() -> float:
        return before + time.perf_counter() - start

    try:
        model.train()
        while not loop.done and loop.step < t.steps:
            step = loop.step + 1
            lr_used = _optimizer_step(step, cfg, model, task, opt, sched, scaler, autocast, loop, writer, nan_steps)
            loop.step = step
            tracker.track(model, step)  # no host sync
            if bar is not None:
                bar.update(1)
            if step in evals:
                last = _evaluation_point(step, lr_used, cfg, model, task, writer, loop, tracker, full_steps, elapsed)
                if bar is not None:
                    bar.set_postfix({"loss": f"{last['train_loss']:.3f}",
                                     spec.headline[:9]: f"{last[spec.headline]:.3f}"}, refresh=False)
            if not loop.done and step < t.steps and policy.enabled and policy.due(step):
                writer.check_finite(loop, t.skip_nonfinite)  # never checkpoint a diverged model
                writer.save_resume_point(step, model, parts, loop, elapsed(), policy=policy)
        tracker.flush(run_dir / "tracking.jsonl")
        if writer.point is None or loop.step > writer.point.step:  # else resumed at the final checkpoint
            writer.save_resume_point(loop.step, model, parts, loop, elapsed(), final=True)
    except OSError as exc:  # metrics.jsonl / tracking.jsonl (checkpoint writes report themselves)
        raise RunError(writer.write_failed(exc, "run's logs")) from None
    finally:
        if bar is not None:
            bar.close()
    summary = run_summary(cfg, run_dir, model, device, loop, tracker, elapsed())
    try:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    except OSError as exc:
        raise RunError(writer.write_failed(exc, "summary")) from None
    writer.finish()
    return summary


def _evaluation_point(step: int, lr_used: float, cfg: Config, model, task, writer: RunWriter, loop: LoopState,
                      tracker: Tracker, full_steps: set[int], elapsed) -> dict[str, Any]:
    """Evaluate at ``step`` (the full suite too at ``full_steps`` and when the headline reaches
    ``train.target_accuracy``, which ends the run), log the record and return it."""
    t, spec = cfg.train, task_spec(cfg)
    e0 = time.perf_counter()
    writer.check_finite(loop, t.skip_nonfinite)  # host syncs, at the evaluation point only
    train_loss = float(loop.loss_sum) / max(1, loop.loss_count)
    loop.loss_sum.zero_()
    loop.loss_count = 0
    ev = task.evaluate(model)
    loop.eval_seconds += time.perf_counter() - e0
    last = {"step": step, "seconds": round(elapsed(), 3), "lr": lr_used, "train_loss": round(train_loss, 5), **ev}
    if loop.skipped:
        last["skipped_nonfinite"] = loop.skipped
    stop = bool(t.target_accuracy and spec.reached(ev[spec.headline], t.target_accuracy))
    if step in full_steps or stop:
        a0 = time.perf_counter()
        last.update(task.analyze(model))
        loop.eval_seconds += time.perf_counter() - a0
        last["full"] = True
        if step != t.steps and not stop:
            writer.save(step, model)  # an analysis checkpoint (weights only)
    writer.append(last)
    tracker.flush(writer.run_dir / "tracking.jsonl")  # the host copy, at the evaluation point
    loop.records.append(last)
    if stop:
        loop.reached_at = step
        loop.done = True
    return last


def run_summary(cfg: Config, run_dir: Path, model, device: torch.device, loop: LoopState, tracker: Tracker,
                seconds: float) -> dict[str, Any]:
    """``summary.json`` of a finished run: sizes, times, the headline, the phase change and the
    last evaluation's values."""
    t = cfg.train
    last = loop.records[-1] if loop.records else {}
    return {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "steps": loop.step,
        "seconds": round(seconds, 3),
        "eval_seconds": round(loop.eval_seconds, 3),
        "n_params": model.num_params(),
        "tokens_seen": loop.step * t.grad_accum * t.batch_size * cfg.model.n_ctx,
        "device": str(device),
        "headline": headline_record(cfg, last),
        "reached_target_at": loop.reached_at,
        "phase_change": phase_from_run(loop.records, tracker.records, extra=[task_spec(cfg).headline]),
        **({"skipped_nonfinite": loop.skipped} if loop.skipped else {}),
        **{k: v for k, v in last.items() if k not in ("step", "seconds", "loss_by_position")},
    }


def _optimizer_step(step: int, cfg: Config, model, task, opt, sched, scaler, autocast, loop: LoopState,
                    writer: RunWriter, nan_steps: set[int]) -> float:
    """One optimizer step (``grad_accum`` batches); returns the learning rate it used. With
    ``train.skip_nonfinite`` a step whose loss (or gradient norm) is not finite makes no update."""
    t = cfg.train
    losses = []
    for _ in range(t.grad_accum):
        tokens, mask = task.train_batch(t.batch_size)
        with autocast():
            loss = training_loss(model(tokens), tokens, mask) / t.grad_accum
        if step in nan_steps:  # test hook (NAN_STEPS_ENV)
            loss = loss * float("nan")
        scaler.scale(loss).backward()
        losses.append(loss.detach())
    norm = None
    if t.grad_clip:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    lr_used = sched.get_last_lr()[0]
    if t.skip_nonfinite:  # one host sync per step, only with this option
        finite = torch.isfinite(torch.stack(losses)).all()
        if norm is not None:
            finite = finite & torch.isfinite(norm)
        if not bool(finite):
            loop.skipped += 1
            if loop.skipped > t.skip_nonfinite:
                loop.first_bad.fill_(step)
                writer.check_finite(loop, t.skip_nonfinite)
            opt.zero_grad(set_to_none=True)  # no update; the schedule moves on
            if scaler.is_enabled():
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            sched.step()
            return lr_used
    for x in losses:
        loop.loss_sum += x
    loop.loss_count += 1
    if not t.skip_nonfinite:  # remember the first bad step on the device: no host sync
        loop.first_bad = torch.where((loop.first_bad == 0) & ~torch.isfinite(loop.loss_sum), step, loop.first_bad)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return lr_used


# --------------------------------------------------------------------------- resuming, seeds
def resume(run_dir: Path, overrides: list[str] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its newest complete resume point with the config in
    its ``config.toml`` (``overrides``: ``KEY=VALUE`` strings, operational keys only); returns the
    summary (a finished run's as it is)."""
    run_dir = Path(run_dir)
    return train(_run_config(run_dir, overrides), run_dir, progress=progress, resume=True)


def _run_config(run_dir: Path, overrides: list[str] | None) -> Config:
    if not holds_run(run_dir):
        raise RunError(f"{run_dir} is not a run directory (no config.toml); nothing to resume")
    try:
        return load_config(str(run_dir / "config.toml"), list(overrides or []))
    except ConfigError as exc:
        raise RunError(f"cannot resume {run_dir}: {exc}") from None


def train_seeds(cfg: Config, seeds: list[int], out: Path, progress: bool | None = None,
                on_start=None, on_done=None) -> dict[str, Any]:
    """Train ``cfg`` once per seed into ``out/seed_K`` (the plan goes to ``out/seeds.json`` first,
    so a killed run can be resumed as a whole: :func:`resume_seeds`) and write
    ``out/seeds_summary.json``; returns that summary. ``on_start(seed, run_dir, status)`` and
    ``on_done(seed, run_dir, summary)`` are called around each seed."""
    out = Path(out)
    if (out / SEED_PLAN).exists() or any(holds_run(out / f"seed_{s}") for s in seeds):
        raise RunError(f"{out} already holds a --seeds run; choose another --out, or --resume it (nothing was changed)")
    probe_writable(out)
    write_seed_plan(out, cfg, seeds)
    return _seed_loop(out, seeds, lambda seed: seed_config(cfg, seed), progress, False, on_start, on_done)


def resume_seeds(out: Path, seeds: list[int] | None = None, overrides: list[str] | None = None,
                 progress: bool | None = None, on_start=None, on_done=None) -> dict[str, Any]:
    """Resume a ``--seeds`` output directory: finished seeds are skipped, started ones resumed
    (:func:`resume`), seeds that never started are started from ``seeds.json``."""
    out = Path(out)
    plan = read_seed_plan(out)
    found = sorted(int(d.name[5:]) for d in out.glob("seed_*") if d.name[5:].isdigit() and holds_run(d))
    base, planned = plan if plan is not None else (None, found)
    seeds = list(seeds) if seeds else planned
    if not seeds:
        raise RunError(f"{out} is not a --seeds output directory (no seeds.json, no seed_*/config.toml)")
    if base is not None and overrides:
        try:
            changed = config_from_dict(apply_overrides(base.to_dict(), list(overrides)))
        except ConfigError as exc:
            raise RunError(f"cannot resume {out}: {exc}") from None
        require_same_config(base, changed, str(out), "--set changes")
        base = changed

    def config_of(seed: int) -> Config:
        run_dir = out / f"seed_{seed}"
        if holds_run(run_dir):
            return _run_config(run_dir, overrides)
        if base is None:
            raise RunError(f"cannot resume {out}: seed {seed} never started and there is no {SEED_PLAN} to start it from")
        return seed_config(base, seed)

    return _seed_loop(out, seeds, config_of, progress, True, on_start, on_done)


def _seed_loop(out: Path, seeds: list[int], config_of, progress, resume_: bool, on_start, on_done) -> dict[str, Any]:
    run_dirs = []
    for seed in seeds:
        run_dir = out / f"seed_{seed}"
        status = "finished" if run_finished(run_dir) else "resumed" if resume_ and holds_run(run_dir) else "new"
        if on_start is not None:
            on_start(seed, run_dir, status)
        summary = train(config_of(seed), run_dir, progress=progress, resume=resume_)
        if on_done is not None:
            on_done(seed, run_dir, summary)
        run_dirs.append(run_dir)
    from .metrics.seeds import summarize_seeds

    summary = summarize_seeds(run_dirs)
    atomic_write_text(out / "seeds_summary.json", json.dumps(summary, indent=1) + "\n")
    return summary

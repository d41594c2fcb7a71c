"""The one training loop: AdamW, warmup + cosine/constant schedule, grad clipping, AMP, evals,
checkpoints and a run directory.

Design rules: every random stream comes from a generator this trainer owns (model init under a
forked RNG seeded from ``train.seed``, data from the task's own ``torch.Generator``), and the
loop never reads a loss back to the host between evaluation points.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .causality import check_causal
from .checkpoint import atomic_write_text, save_checkpoint
from .config import Config, dump_toml
from .data.synthetic import EVAL_SEED_OFFSET, RepeatedTokens
from .errors import UserError
from .metrics.evaluate import evaluate_repeat
from .metrics.phase import phase_from_run
from .metrics.suite import analyze_repeat
from .metrics.tracking import Tracker
from .models import Transformer, build_model


class RunError(UserError):
    """A run cannot start or continue; the message is one line for the user."""


# --------------------------------------------------------------------------- tasks
class Task(Protocol):
    #: the metric the progress bar and ``target_accuracy`` look at
    headline: str

    def train_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def evaluate(self, model: Transformer) -> dict[str, Any]: ...
    def analyze(self, model: Transformer) -> dict[str, Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...




class RepeatTask:
    """Repeated random tokens; evaluation on a fixed held-out set with per-sequence periods."""

    headline = "induction_accuracy"

    def __init__(self, cfg: Config, device: torch.device):
        m, d, t = cfg.model, cfg.data, cfg.train
        self.cfg = cfg
        self.bos = d.bos
        self.loss_on = t.loss_on
        self.data = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos,
                                   d.period_mode, device, seed=t.seed)
        held_out = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos,
                                  "sequence", device, seed=t.seed + EVAL_SEED_OFFSET)
        self.eval_batches = held_out.fixed_set(d.eval_sequences)

    def train_batch(self, batch_size: int):
        b = self.data.sample(batch_size)
        return b.tokens, (b.induction_mask if self.loss_on == "induction" else None)

    def evaluate(self, model: Transformer) -> dict[str, Any]:
        return evaluate_repeat(model, self.eval_batches, self.bos)

    def analyze(self, model: Transformer) -> dict[str, Any]:
        """The full measurement suite (slower; run at log-spaced evaluations)."""
        return analyze_repeat(model, self.cfg, self.eval_batches)

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.data.load_state_dict(state)


def make_task(cfg: Config, device: torch.device) -> Task:
    if cfg.data.kind == "repeat":
        return RepeatTask(cfg, device)
    from .data.text import TextTask  # natural text (optional dependencies)

    return TextTask(cfg, device)


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


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of ``train.lr`` at optimizer step ``step`` (0-based)."""
    t = cfg.train
    if t.warmup and step < t.warmup:
        return (step + 1) / t.warmup
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.warmup)
    progress = min(1.0, (step - t.warmup) / span)
    return t.min_lr_frac + (1 - t.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def eval_steps(cfg: Config) -> list[int]:
    """Regular evaluations every ``eval_every`` steps, ``log_evals`` log-spaced ones before the
    first regular one (the early, fast-changing part of training), and the last step."""
    t = cfg.train
    steps = set(range(t.eval_every, t.steps + 1, t.eval_every)) | {t.steps}
    if t.log_evals:
        hi = min(t.eval_every, t.steps)
        for i in range(t.log_evals):
            steps.add(max(1, round(hi ** (i / t.log_evals))))
    return sorted(s for s in steps if 1 <= s <= t.steps)


def full_metric_steps(cfg: Config) -> set[int]:
    """Evaluation steps that also run the full suite and keep a checkpoint (the last step always)."""
    t = cfg.train
    evals = eval_steps(cfg)
    if t.full_metrics == "all":
        return set(evals)
    chosen = {t.steps}
    if t.full_metrics == "log":
        regular = [s for s in evals if s >= min(t.eval_every, t.steps)]
        lo, hi = regular[0], regular[-1]
        for i in range(t.full_evals):
            want = lo * (hi / lo) ** (i / max(1, t.full_evals - 1))
            chosen.add(min(regular, key=lambda s: abs(math.log(s) - math.log(want))))
    return chosen


def training_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    tgt = tokens[:, 1:].reshape(-1)
    if mask is None:
        return F.cross_entropy(lg, tgt)
    losses = F.cross_entropy(lg, tgt, reduction="none")
    m = mask.reshape(-1).to(losses.dtype)
    return (losses * m).sum() / m.sum().clamp_min(1)


def prepare_run_dir(out: Path) -> Path:
    out = Path(out)
    if (out / "metrics.jsonl").exists() or (out / "summary.json").exists():
        raise RunError(f"{out} already holds a run; choose another --out (nothing was changed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
    return out


def default_run_dir(cfg: Config, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{cfg.name}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = Path(f"{base}-{i}")
    return out


# --------------------------------------------------------------------------- training
def train(cfg: Config, out: Path | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train ``cfg`` into run directory ``out`` and return the summary dict."""
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if cfg.data.kind == "text":  # the model's vocabulary is the tokenizer's (fills the token cache)
        from .data.text import resolve_text_vocab

        resolve_text_vocab(cfg)
    model = init_model(cfg, device)
    check_causal(model, cfg.model.vocab_size, cfg.model.n_ctx, device=device)  # CausalityError
    run_dir = prepare_run_dir(out if out is not None else default_run_dir(cfg))
    atomic_write_text(run_dir / "config.toml", dump_toml(cfg))

    task = make_task(cfg, device)
    tracker = Tracker(cfg, device)  # phase-change curves every train.track_every steps, on the device
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    use_amp = device.type == "cuda" and t.amp != "none"
    amp_dtype = torch.bfloat16 if t.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and t.amp == "fp16")
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext

    evals = set(eval_steps(cfg))
    full_steps = full_metric_steps(cfg)
    meta = {"config": cfg.to_dict(), "n_params": model.num_params(), "layers": model.layer_kinds}
    show = t.progress if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, desc=cfg.name, unit="step", dynamic_ncols=True, mininterval=0.25)

    metrics_path = run_dir / "metrics.jsonl"
    log_fh = open(metrics_path, "a")
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    start = time.perf_counter()
    eval_seconds = 0.0
    last: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    reached_at = None
    step = 0
    try:
        model.train()
        for step in range(1, t.steps + 1):
            for _ in range(t.grad_accum):
                tokens, mask = task.train_batch(t.batch_size)
                with autocast():
                    loss = training_loss(model(tokens), tokens, mask) / t.grad_accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            loss_count += 1
            if t.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            lr_used = sched.get_last_lr()[0]
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            tracker.track(model, step)  # no host sync
            if bar is not None:
                bar.update(1)
            if step in evals:
                e0 = time.perf_counter()
                train_loss = float(loss_sum) / max(1, loss_count)  # the only host sync
                if not math.isfinite(train_loss):
                    raise RunError(f"training loss became {train_loss} at step {step}; lower train.lr")
                loss_sum.zero_()
                loss_count = 0
                ev = task.evaluate(model)
                eval_seconds += time.perf_counter() - e0
                last = {"step": step, "seconds": round(time.perf_counter() - start, 3),
                        "lr": lr_used, "train_loss": round(train_loss, 5), **ev}
                stop = bool(t.target_accuracy and task.headline == "induction_accuracy"
                            and ev["induction_accuracy"] >= t.target_accuracy)
                if step in full_steps or stop:
                    a0 = time.perf_counter()
                    last.update(task.analyze(model))
                    eval_seconds += time.perf_counter() - a0
                    last["full"] = True
                    if step != t.steps and not stop:
                        save_checkpoint(run_dir, step, model, meta)
                log_fh.write(json.dumps(last) + "\n")
                tracker.flush(run_dir / "tracking.jsonl")  # the host copy, at the evaluation point
                records.append(last)
                log_fh.flush()
                if bar is not None:
                    post = {"loss": f"{train_loss:.3f}", task.headline[:9]: f"{ev[task.headline]:.3f}"}
                    bar.set_postfix(post, refresh=False)
                if stop:
                    reached_at = step
                    break
    finally:
        log_fh.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    tracker.flush(run_dir / "tracking.jsonl")
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "task": task.state_dict(),
             "scaler": scaler.state_dict(), "tracker": tracker.state_dict()}
    save_checkpoint(run_dir, step, model, meta, state)
    summary = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "steps": step,
        "seconds": round(seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "n_params": model.num_params(),
        "tokens_seen": step * t.grad_accum * t.batch_size * cfg.model.n_ctx,
        "device": str(device),
        "reached_target_at": reached_at,
        "phase_change": phase_from_run(records, tracker.records),
        **{k: v for k, v in last.items() if k not in ("step", "seconds", "loss_by_position")},
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary

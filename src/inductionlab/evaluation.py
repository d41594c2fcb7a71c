"""Evaluate saved runs: rebuild the model from ``config.toml``, load checkpoints, score them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, checkpoint_step, list_checkpoints, load_weights
from .config import MAX_TOKENS, Config, ConfigError, model_table, table_dict
from .configfile import load_config
from .errors import UserError
from .models import Transformer, build_model


class EvalError(UserError):
    pass


def load_run_config(run_dir: Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a run directory (no such directory)")
    path = run_dir / "config.toml"
    if not path.exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.toml)")
    try:
        return load_config(str(path))
    except ConfigError as exc:
        raise EvalError(f"{path}: {exc}") from None


def load_model(cfg: Config, checkpoint: Path, device: str | torch.device = "cpu") -> Transformer:
    sidecar = Path(checkpoint).with_suffix(".json")
    if sidecar.exists():  # the config the weights were trained with must be the run's
        try:
            saved = json.loads(sidecar.read_text())["config"]["model"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"checkpoint metadata {sidecar} is unreadable") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint metadata {sidecar} is unreadable (config.model is not a table)")
        saved, now = model_table(saved), table_dict(cfg.model)  # an old checkpoint's flat keys read as today's
        if saved != now:
            diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
            raise CheckpointError(f"checkpoint {checkpoint} was trained with a different model config "
                                  f"(differs in: {', '.join(diff)})")
    model = build_model(cfg.model)
    weights = load_weights(checkpoint)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {checkpoint} does not match the run's config: {first}") from None
    return model.to(device).eval()


def load_run(run_dir: Path, step: int | None = None, device: str = "cpu") -> tuple[Config, Transformer]:
    """Config and model of a run, at its last checkpoint or at ``step``."""
    cfg = load_run_config(run_dir)
    cks = list_checkpoints(run_dir)
    if step is not None:
        cks = [c for c in cks if checkpoint_step(c) == step]
    if not cks:
        raise EvalError(f"{run_dir} has no checkpoint{'' if step is None else f' at step {step}'}")
    try:
        return cfg, load_model(cfg, cks[-1], device)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None


def evaluate_run(run_dir: Path, checkpoints: str = "last", device: str = "cpu") -> dict[str, Any]:
    """``{"run_dir", "headline": metric key, "checkpoints": [{"step", evaluation, analysis}]}``:
    the run's task evaluates and analyses its last (or every) checkpoint."""
    from .tasks import make_task, task_spec

    if checkpoints not in ("last", "all"):
        raise EvalError(f"--checkpoints must be 'last' or 'all', got '{checkpoints}'")
    cfg = load_run_config(run_dir)
    cks = list_checkpoints(run_dir)
    if not cks:
        raise EvalError(f"{run_dir} has no checkpoints")
    if checkpoints == "last":
        cks = cks[-1:]
    task = make_task(cfg, torch.device(device))
    out = []
    for ck in cks:
        try:
            model = load_model(cfg, ck, device)
        except CheckpointError as exc:
            raise EvalError(str(exc)) from None
        rec = {"step": checkpoint_step(ck), **task.evaluate(model), **task.analyze(model)}
        out.append(rec)
    return {"run_dir": str(run_dir), "headline": task_spec(cfg).headline, "checkpoints": out}


#: scalar metrics a text summary of an evaluation or a run shows, when present (the headline first)
SCALAR_KEYS = ("induction_accuracy", "induction_loss", "first_period_loss",
               "val_loss", "val_accuracy", "icl_score")


def format_scores(rec: dict[str, Any], headline: str | None = None, per_head: bool = True) -> list[str]:
    """Text lines of one evaluation record or summary: the headline and the other scalar metrics,
    then, for every per-head score of metrics/heads.py's registry that ``rec`` holds, the scores
    per layer (``per_head``) and the best head."""
    from .metrics.heads import HEAD_METRICS

    keys = [k for k in dict.fromkeys([headline, *SCALAR_KEYS]) if k and isinstance(rec.get(k), (int, float))]
    lines = [f"{k}: {rec[k]:.4f}" + ("  (headline)" if k == headline else "") for k in keys]
    for key, metric in HEAD_METRICS.items():
        scores = rec.get(key)
        if per_head and isinstance(scores, dict) and metric.source == "pattern":
            lines.append(f" {metric.title} score per head:")
            lines += [f"  L{layer}: " + "  ".join(f"H{h}={v:.3f}" for h, v in enumerate(vals))
                      for layer, vals in scores.items()]
        best = rec.get(metric.best) if metric.best else None
        if isinstance(best, dict) and "name" in best:
            label = metric.best.removeprefix("best_").removesuffix("_head").replace("_", "-")
            lines.append(f"best {label} head: {best['name']} score {best['score']:.3f}")
    return lines


def ablation_study_run(run_dir: Path, sequences: int = 256, step: int | None = None, device: str = "cpu",
                       batch: int = 16, seed: int = 0) -> dict[str, Any]:
    """:func:`metrics.ablation.ablation_study` of a repeated-token run at its last checkpoint (or
    ``step``): ``sequences`` fresh held-out sequences (the evaluation generator, seed
    ``train.seed + EVAL_SEED_OFFSET``, per-sequence periods), every head and every role group
    (:func:`metrics.ablation.classify_heads` on the per-head scores of the same sequences)
    ablated. Adds ``run_dir``, ``step``, ``scores`` (``{score: {layer: [head]}}``) and ``roles``
    (``{"L0H0": role}``) to the study's dict."""
    from .data.synthetic import EVAL_SEED_OFFSET, RepeatedTokens
    from .metrics.ablation import ablation_study, classify_heads, head_scores, role_groups

    if sequences < 2:
        raise EvalError(f"--sequences must be >= 2, got {sequences}")
    cfg = load_run_config(run_dir)
    if sequences * cfg.model.n_ctx > MAX_TOKENS:
        raise EvalError(f"--sequences {sequences} x model.n_ctx {cfg.model.n_ctx} is more than {MAX_TOKENS} tokens")
    if cfg.data.kind != "repeat":
        raise EvalError(f"{run_dir} is a {cfg.data.kind} run; the ablation study needs repeated-token data")
    cks = list_checkpoints(run_dir)
    cfg, model = load_run(run_dir, step, device)
    m, d = cfg.model, cfg.data
    if not model.attention_layers:
        raise EvalError(f"{run_dir}: the model has no attention layer to ablate")
    held_out = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos, "sequence", device,
                              seed=cfg.train.seed + EVAL_SEED_OFFSET)
    batches = held_out.fixed_set(sequences)
    tokens = torch.cat([b.tokens for b in batches])
    mask = torch.cat([b.induction_mask for b in batches])
    scores = head_scores(model, tokens, torch.cat([b.periods for b in batches]), d.bos)
    roles = classify_heads(scores["previous_token"], scores["prefix_matching"], scores["current_token"])
    study = ablation_study(model, tokens, mask, role_groups(roles), batch=batch, seed=seed)
    return {"run_dir": str(run_dir),
            "step": step if step is not None else checkpoint_step(cks[-1]),
            "scores": {k: {str(layer): [round(float(v), 4) for v in t] for layer, t in s.items()}
                       for k, s in scores.items()},
            "roles": {f"L{layer}H{h}": r for (layer, h), r in roles.items()},
            **study}

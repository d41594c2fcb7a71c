"""Static figures (matplotlib, Agg). Each ``fig_*`` takes a :class:`RunData` and returns a
``Figure`` or ``None`` when the run has nothing to show for it (e.g. no ``ablation`` key yet)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics.heads import HEAD_METRICS  # noqa: E402
from .runs import RunData, Sample  # noqa: E402

DPI = 90
CMAP = "viridis"


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _layers(d: dict) -> list[str]:
    return sorted(d, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else str(k))


def _head_matrix(d: dict) -> tuple[np.ndarray, list[str]]:
    """``{"L": [per head]}`` -> ``[layer, head]`` array (NaN-padded) and the layer names."""
    layers = _layers(d)
    width = max((len(d[k]) for k in layers), default=0)
    m = np.full((len(layers), width), np.nan)
    for i, k in enumerate(layers):
        vals = [np.nan if v is None else v for v in d[k]]
        m[i, : len(vals)] = vals
    return m, layers


def _heatmap(ax, m, rows, cols, title, vmin=None, vmax=None, cmap=CMAP, annotate=True, fmt="{:.2f}"):
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    if annotate and m.size <= 144:
        finite = m[np.isfinite(m)]
        mid = (np.nanmin(finite) + np.nanmax(finite)) / 2 if finite.size else 0
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="black" if v > mid and cmap == CMAP else "white")
    return im


def phase_steps(run: RunData) -> tuple[list[float], tuple[float, float] | None]:
    """Detected change steps (one line per curve) and the change window (10%-90% of the change)
    of the induction loss, else of the first curve found, out of ``phase_from_run``."""
    ph = run.phase()
    curves = [c for c in dict.fromkeys(("induction_loss", "prefix_matching", "induction_accuracy", "icl_score",
                                        run.headline, "val_loss"))
              if isinstance(ph.get(c), dict)]
    lines = sorted({float(ph[c]["step"]) for c in curves})
    span = None
    if curves:
        lo, hi = ph[curves[0]]["window"]
        span = (float(lo), float(hi))
    return lines, span


# --------------------------------------------------------------------------- attention
def fig_attention_grid(sample: Sample, step: int, title: str = "") -> plt.Figure | None:
    pats = sample.patterns.get(step)
    if not pats:
        return None
    layers = sorted(pats)
    n_heads = max(p.shape[0] for p in pats.values())
    n = len(sample.tokens)
    size = 2.3 if n <= 40 else 2.8
    fig, axes = plt.subplots(len(layers), n_heads, figsize=(size * n_heads + 0.4, size * len(layers) + 0.5),
                             squeeze=False)
    show_labels = n <= 48
    for i, layer in enumerate(layers):
        for h in range(n_heads):
            ax = axes[i, h]
            if h >= pats[layer].shape[0]:
                ax.axis("off")
                continue
            ax.imshow(pats[layer][h], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"L{layer}H{h}", fontsize=9)
            if show_labels:
                ax.set_xticks(range(n), sample.labels, fontsize=3.5, rotation=90)
                ax.set_yticks(range(n), sample.labels, fontsize=3.5)
            else:
                ticks = list(range(0, n, max(1, n // 8)))
                ax.set_xticks(ticks, [sample.labels[t] for t in ticks], fontsize=5, rotation=90)
                ax.set_yticks(ticks, [sample.labels[t] for t in ticks], fontsize=5)
            ax.tick_params(length=0, pad=1)
            if h == 0:
                ax.set_ylabel("query", fontsize=7)
            if i == len(layers) - 1:
                ax.set_xlabel("key", fontsize=7)
    fig.suptitle(title or f"attention on {sample.title}, step {step}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- curves
def fig_curves(run: RunData):
    recs = run.records
    steps = np.array([r["step"] for r in recs], float)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    plotted = 0
    for key, label in (("train_loss", "train loss"), ("induction_loss", "induction loss (held out)"),
                       ("val_loss", "validation loss")):
        ys = [r.get(key) for r in recs]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=label, lw=1.4)
            plotted += 1
    _plain_log_x(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("losses", fontsize=10)
    shown = {"induction_accuracy", "val_accuracy", "icl_score", "train_loss", "induction_loss", "val_loss"}
    extra = [] if run.headline in shown else [(run.headline, f"{run.headline.replace('_', ' ')} (headline)")]
    for key, label in (("induction_accuracy", "induction accuracy"), *extra,
                       ("val_accuracy", "validation accuracy"), ("icl_score", "in-context score (nats)")):
        ys = [r.get(key) for r in recs]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float))]
        if pts:
            ax2.plot(*zip(*pts), label=label, lw=1.4, marker="." if len(pts) < 30 else None)
            plotted += 1
    _plain_log_x(ax2)
    ax2.set_xlabel("step")
    ax2.set_title("accuracy / in-context learning", fontsize=10)
    lines, span = phase_steps(run)
    for a in (ax, ax2):
        if span:
            a.axvspan(*span, color="tab:red", alpha=0.12, label="phase change")
        for i, x in enumerate(lines):
            a.axvline(x, color="tab:red", ls="--", lw=1, label=None if (span or i) else "phase change")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
        a.grid(alpha=0.3)
    if not plotted:
        plt.close(fig)
        return None
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- per-head scores
def fig_head_scores(run: RunData):
    """One heatmap (layers x heads) per per-head score of the registry (metrics/heads.py) the run
    logged, at its last record holding it, on the score's natural range (smear σ(α) has a figure of its own)."""
    kinds = [m for k, m in HEAD_METRICS.items() if k != "smear_sigma" and isinstance(run.last_with(k) and
                                                                                   run.last_with(k)[k], dict)]
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], kinds):
        r = run.last_with(metric.key)
        m, layers = _head_matrix(r[metric.key])
        vmin, vmax = metric.range
        im = _heatmap(ax, m, [f"L{l}" for l in layers], [f"H{h}" for h in range(m.shape[1])],
                      f"{metric.title} (step {r['step']})", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.tight_layout()
    return fig


def _pick(recs: list[dict], n: int) -> list[dict]:
    if len(recs) <= n:
        return recs
    idx = np.unique(np.linspace(0, len(recs) - 1, n).round().astype(int))
    return [recs[i] for i in idx]


def _plain_log_x(ax):
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fig_head_evolution(run: RunData, columns: int = 8):
    # every per-head score of the registry with a fixed range (one colour scale across steps)
    kinds = [(k, m.title) for k, m in HEAD_METRICS.items() if k != "smear_sigma" and None not in m.range
             and any(isinstance(r.get(k), dict) for r in run.records)]
    if not kinds:
        return None
    columns = max(min(columns, len([r for r in (run.full or run.records) if isinstance(r.get(k), dict)]))
                  for k, _ in kinds)
    columns = max(1, columns)
    fig, axes = plt.subplots(len(kinds), columns + 1, figsize=(1.35 * columns + 3.2, 1.5 * len(kinds) + 0.6),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * columns + [2.6]})
    for row, (key, title) in enumerate(kinds):
        recs = [r for r in (run.full or run.records) if isinstance(r.get(key), dict)]
        if len(recs) < 2:
            recs = [r for r in run.records if isinstance(r.get(key), dict)]
        chosen = _pick(recs, columns)
        for c in range(columns):
            ax = axes[row, c]
            if c >= len(chosen):
                ax.axis("off")
                continue
            m, layers = _head_matrix(chosen[c][key])
            lo, hi = HEAD_METRICS[key].range
            ax.imshow(np.ma.masked_invalid(m), cmap=CMAP, vmin=lo, vmax=hi, aspect="auto")
            ax.set_xticks(range(m.shape[1]), [f"H{h}" for h in range(m.shape[1])], fontsize=6)
            ax.set_yticks(range(len(layers)), [f"L{l}" for l in layers], fontsize=6)
            ax.set_title(f"step {chosen[c]['step']}", fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
        # line plot: every head's score over all records
        ax = axes[row, columns]
        recs = [r for r in run.records if isinstance(r.get(key), dict)]
        steps = [r["step"] for r in recs]
        layers = _layers(recs[-1][key])
        for l in layers:
            for h in range(len(recs[-1][key][l])):
                ys = [r[key].get(l, [None] * (h + 1))[h] if len(r[key].get(l, [])) > h else None for r in recs]
                ys = [np.nan if y is None else y for y in ys]
                ax.plot(steps, ys, lw=1, label=f"L{l}H{h}")
        _plain_log_x(ax)
        lo, hi = HEAD_METRICS[key].range
        ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
        ax.set_title(f"{title} per head", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if row == 0:
            ax.legend(fontsize=5, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- loss by position
def fig_loss_by_position(run: RunData, n: int = 6):
    recs = [r for r in run.records if isinstance(r.get("loss_by_position"), list) and r["loss_by_position"]]
    if not recs:
        return None
    full = [r for r in recs if r.get("full")]
    chosen = _pick(full if len(full) >= 2 else recs, n)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    cmap = plt.get_cmap("plasma")
    for i, r in enumerate(chosen):
        ax.plot(range(len(r["loss_by_position"])), r["loss_by_position"], lw=1.2,
                color=cmap(i / max(1, len(chosen) - 1) * 0.85), label=f"step {r['step']}")
    last = run.last_with("icl_indices")
    if last and isinstance(last.get("icl_indices"), list):
        for x in last["icl_indices"]:
            ax.axvline(x, color="gray", ls=":", lw=1)
    ax.set_xlabel("position of the prediction (token index)")
    ax.set_ylabel("loss (nats)")
    ax.set_title("loss by token position", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- composition
def fig_composition(run: RunData):
    rec = run.last_with("composition")
    if not rec or not isinstance(rec["composition"], dict):
        return None
    comp = rec["composition"]
    heads = comp.get("heads") or []
    kinds = [k for k in ("q", "k", "v") if isinstance(comp.get(k), list)]
    if not kinds or not heads:
        return None
    base = comp.get("baseline") or {}
    vals = [v for k in kinds for row in comp[k] for v in row if v is not None]
    vmax = max(vals + [b for b in base.values() if isinstance(b, (int, float))] + [1e-6])
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), 3.2), squeeze=False)
    for ax, k in zip(axes[0], kinds):
        m = np.array([[np.nan if v is None else v for v in row] for row in comp[k]], float)
        b = base.get(k)
        title = f"{k.upper()}-composition" + (f"\nrandom baseline {b:.3f}" if isinstance(b, (int, float)) else "")
        im = _heatmap(ax, m, heads, heads, title, vmin=0, vmax=vmax, fmt="{:.2f}")
        ax.set_xlabel("destination head (later layer)", fontsize=7)
        ax.set_ylabel("source head", fontsize=7)
        ax.tick_params(axis="x", rotation=90)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if isinstance(b, (int, float)):
            cb.ax.axhline(b, color="red", lw=2)
    fig.suptitle(f"composition scores at step {rec['step']} (red line on colour bar: baseline)", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- ablation
def fig_ablation(run: RunData):
    rec = run.last_with("ablation")
    if not rec or not isinstance(rec["ablation"], dict):
        return None
    ab = rec["ablation"]
    heads = ab.get("heads") or []
    modes = [m for m in ("zero", "mean", "pattern_preserving") if isinstance(ab.get(m), dict)]
    metrics = [k for k in ("induction_loss", "induction_accuracy", "icl_score")
               if any(isinstance(ab[m].get(k), list) for m in modes)]
    if not heads or not modes or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.0), squeeze=False)
    width = 0.8 / len(modes)
    x = np.arange(len(heads))
    for ax, metric in zip(axes[0], metrics):
        for i, mode in enumerate(modes):
            ys = ab[mode].get(metric)
            if not isinstance(ys, list):
                continue
            ys = [np.nan if y is None else y for y in ys]
            ax.bar(x + (i - (len(modes) - 1) / 2) * width, ys, width, label=mode.replace("_", "-"))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, heads, fontsize=7, rotation=90)
        ax.set_title(f"Δ {metric.replace('_', ' ')} when ablated", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"head ablation at step {rec['step']}", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- conv kernel / smear
def fig_conv_kernel(run: RunData):
    rec = run.last_with("conv_kernel")
    if not rec or not isinstance(rec["conv_kernel"], dict) or not rec["conv_kernel"]:
        return None
    layers = _layers(rec["conv_kernel"])
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 2.8), squeeze=False)
    for ax, l in zip(axes[0], layers):
        vals = np.array(rec["conv_kernel"][l], float)
        if vals.ndim > 1:  # per channel: show the mean and the spread
            mean = vals.mean(0)
            ax.fill_between(range(mean.size), vals.min(0), vals.max(0), alpha=0.2)
            vals = mean
        ax.bar(range(vals.size), vals, color=["tab:orange" if v >= 0 else "tab:blue" for v in vals])
        ax.set_xticks(range(vals.size), ["t" if i == 0 else f"t-{i}" for i in range(vals.size)], fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"conv layer {l}: kernel weight by offset", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def fig_smear(run: RunData):
    rec = run.last_with("smear_sigma")
    if not rec or not isinstance(rec["smear_sigma"], dict) or not rec["smear_sigma"]:
        return None
    m, layers = _head_matrix(rec["smear_sigma"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * m.shape[1] * len(layers), 2.8))
    x = 0
    ticks, labels = [], []
    for i, l in enumerate(layers):
        for h in range(m.shape[1]):
            if np.isfinite(m[i, h]):
                ax.bar(x, m[i, h], color=f"C{i}")
                ticks.append(x)
                labels.append(f"L{l}H{h}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks, labels, fontsize=7, rotation=90)
    ax.set_ylim(0, 1)
    ax.set_ylabel("σ(α)")
    ax.set_title(f"smear gate σ(α) per head (step {rec['step']}; 1 = keys fully smeared onto previous token)",
                 fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- OOD
def fig_ood(run: RunData):
    per = run.last_with("ood_period")
    ln = run.last_with("ood_length")
    conf = run.last_with("confusing_repeat")
    panels = [p for p in ((per, "ood_period", "period P"), (ln, "ood_length", "context length T")) if p[0]]
    if not panels and not conf:
        return None
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.0 * max(1, len(panels)), 2.9), squeeze=False)
    d = run.cfg.data
    train_rng = {"ood_period": (getattr(d, "period_min", None), getattr(d, "period_max", None)),
                 "ood_length": (None, run.cfg.model.n_ctx)}
    for ax, (rec, key, xlabel) in zip(axes[0], panels):
        pts = sorted((float(k), v) for k, v in rec[key].items() if isinstance(v, (int, float)))
        if pts:
            ax.plot(*zip(*pts), marker="o", lw=1.4)
        lo, hi = train_rng[key]
        if lo is not None and hi is not None:
            ax.axvspan(lo, hi, color="tab:green", alpha=0.12, label="training range")
        elif hi is not None:
            ax.axvline(hi, color="tab:green", ls="--", lw=1, label="training n_ctx")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("induction accuracy")
        ax.set_title(f"accuracy vs {xlabel.split()[0]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if conf and isinstance(conf.get("confusing_repeat"), (int, float)):
        ax = axes[0][0]
        if not panels:
            ax.bar([0], [conf["confusing_repeat"]])
            ax.set_xticks([0], ["confusing repeat"])
            ax.set_ylim(0, 1)
        else:
            ax.axhline(conf["confusing_repeat"], color="tab:purple", ls=":", lw=1.2,
                       label=f"confusing repeat {conf['confusing_repeat']:.2f}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


#: (id, title, caption, function) of every per-run static figure, in report order
STATIC_FIGURES = [
    ("curves", "Training curves",
     "Loss and accuracy against training step (log scale). The shaded band / dashed line marks the detected "
     "phase change, when the induction circuit forms and the loss on repeated tokens drops.", fig_curves),
    ("head_scores", "Per-head scores (latest evaluation)",
     " ".join(f"{m.title[0].upper()}{m.title[1:]}: {m.description}." for k, m in HEAD_METRICS.items()
              if k != "smear_sigma" and m.description), fig_head_scores),
    ("head_evolution", "Per-head scores over training",
     "The same heatmaps at several checkpoints (small multiples, colour 0 to 1) and every head's score "
     "over all evaluations.", fig_head_evolution),
    ("loss_by_position", "Loss by token position",
     "Held-out loss of the prediction at each position, at several checkpoints. After the phase change the "
     "loss collapses from the second repeat onwards.", fig_loss_by_position),
    ("composition", "Q / K / V composition",
     "How much each earlier head's output is read by a later head's query, key or value input, beside the "
     "score of random matrices of the same shape.", fig_composition),
    ("ablation", "Head ablation",
     "Change of the held-out metrics when one head is removed (zero, mean or pattern-preserving ablation).",
     fig_ablation),
    ("conv_kernel", "Convolution kernel", "Kernel weight per offset (t is the current token).", fig_conv_kernel),
    ("smear_sigma", "Smear gate", "σ(α) per head of smeared-key attention.", fig_smear),
    ("ood", "Out-of-distribution accuracy",
     "Induction accuracy for fixed periods and context lengths outside (and inside) the training range.", fig_ood),
]


def attention_static(run: RunData) -> list[tuple[str, object]]:
    """(id, figure) of the last-checkpoint attention grid of each sample."""
    out = []
    for s in run.samples:
        if s.steps:
            fig = fig_attention_grid(s, s.steps[-1])
            if fig is not None:
                out.append((f"attention_{s.kind}", fig))
    return out

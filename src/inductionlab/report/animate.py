"""GIF of the attention grid (layers x heads, repeated random tokens) across a run's checkpoints."""

from __future__ import annotations

import io
from pathlib import Path


def write_gif(run_dir: Path, out: Path | None = None, duration_ms: int = 600) -> Path:
    """Write one frame per checkpoint (the last one held three times as long) to ``out``
    (default ``RUN_DIR/attention.gif``) and return its path."""
    try:
        from PIL import Image

        from . import figures as F
    except ImportError as exc:  # matplotlib/pillow are the optional 'report' extra
        from ..errors import UserError

        raise UserError(f"animations need matplotlib: pip install 'inductionlab[report]' ({exc})") from None
    from .runs import ReportError, compute_patterns, load_run_config, repeat_sample

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    sample = repeat_sample(cfg)
    compute_patterns(cfg, run_dir, [sample], max_checkpoints=60)
    if not sample.steps:
        raise ReportError(f"{run_dir} has no checkpoints with attention layers (nothing to animate)")
    frames = []
    for step in sample.steps:
        fig = F.fig_attention_grid(sample, step, title=f"{cfg.name}: attention at step {step}")
        img = Image.open(io.BytesIO(F.to_png(fig))).convert("RGB")
        frames.append(img)
    size = max(f.size[0] for f in frames), max(f.size[1] for f in frames)
    frames = [f if f.size == size else _pad(f, size) for f in frames]
    frames = [f.quantize(colors=255, method=Image.Quantize.MEDIANCUT) for f in frames]
    out = Path(out) if out is not None else run_dir / "attention.gif"
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    except (OSError, ValueError) as exc:  # ValueError: PIL knows no image format for the file name
        raise ReportError(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None
    return out


def _pad(img, size):
    from PIL import Image

    canvas = Image.new("RGB", size, "white")
    canvas.paste(img, (0, 0))
    return canvas

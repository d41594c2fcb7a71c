"""Reports: a self-contained offline HTML page of one or more runs, PNG figures, and a GIF of the
attention grid across checkpoints (``animate.write_gif``). Needs matplotlib (the ``report`` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["write_report"]


def write_report(run_dirs: list[Path], out: Path | None = None, png_dir: Path | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` side by side to ``out`` (default: the first run's
    ``report.html``); with ``png_dir`` also every figure as a PNG. Returns the HTML path."""
    try:
        from .html import write_report as _write
    except ImportError as exc:  # matplotlib is the optional 'report' extra
        raise UserError(f"the report needs matplotlib: pip install 'inductionlab[report]' ({exc})") from None
    try:
        return _write(run_dirs, out, png_dir)
    except OSError as exc:
        raise UserError(f"cannot write the report: {exc.strerror or exc} ({exc.filename or out})") from None

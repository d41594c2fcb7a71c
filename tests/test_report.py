"""HTML report, PNG export and GIF: content, offline-ness, size, and a real headless-Chromium render."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (pillow comes with matplotlib)

from inductionlab.cli import main  # noqa: E402
from inductionlab.errors import UserError  # noqa: E402
from inductionlab.report import write_report  # noqa: E402
from inductionlab.report.animate import write_gif  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from browser import Browser, find_chromium  # noqa: E402

BASE_FIGS = ["attention_repeat", "curves", "head_scores", "head_evolution", "loss_by_position"]
EXTRA_FIGS = ["composition", "ablation", "conv_kernel", "smear_sigma", "ood"]
MAX_BYTES = 5 * 1024 * 1024


def figs_in(html: str) -> set[str]:
    return set(re.findall(r'data-fig="([^"]+)"', html))


def assert_offline(html: str) -> None:
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    # nothing is loaded from anywhere: no src/href to a URL, no CSS url(), no @import
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert not re.search(r"url\(|@import", html)


def fake_full_record(step: int, layers=(0, 1), heads: int = 4, n_ctx: int = 80, conv: bool = True) -> dict:
    """A metrics-log record with every key the full suite may write (values are made up)."""
    names = [f"L{l}H{h}" for l in layers for h in range(heads)]
    s = step / 600
    per = lambda f: {str(l): [round(min(1, f(l, h)), 4) for h in range(heads)] for l in layers}  # noqa: E731
    sq = lambda: [[None if names[j][1] <= names[i][1] else round(0.1 + 0.02 * i + 0.01 * j, 3)  # noqa: E731
                   for j in range(len(names))] for i in range(len(names))]
    return {
        "step": step, "seconds": step / 10, "lr": 1e-3, "train_loss": 5 - 4 * s,
        "induction_accuracy": s, "induction_loss": 5 - 4.5 * s,
        "loss_by_position": [round(5 - 4 * s * (i > 25), 3) for i in range(n_ctx - 1)],
        "previous_token": per(lambda l, h: s * (l == 0) * (h + 1) / heads),
        "prefix_matching": per(lambda l, h: s * (l == 1) * (h + 1) / heads),
        "best_previous_token_head": {"layer": 0, "head": 3, "name": "L0H3", "score": s},
        "best_induction_head": {"layer": 1, "head": 3, "name": "L1H3", "score": s},
        "full": True,
        "copying": per(lambda l, h: 0.2 + 0.1 * h), "ov_positivity": per(lambda l, h: 0.5 - 0.1 * h),
        "icl_score": -1.5 * s, "icl_indices": [10, 60],
        "composition": {"heads": names, "q": sq(), "k": sq(), "v": sq(),
                        "baseline": {"q": 0.12, "k": 0.12, "v": 0.12}},
        "ablation": {"heads": names, **{m: {"induction_loss": [0.1 * i for i in range(len(names))],
                                            "induction_accuracy": [-0.05 * i for i in range(len(names))],
                                            "icl_score": [0.02 * i for i in range(len(names))]}
                                        for m in ("zero", "mean", "pattern_preserving")}},
        **({"conv_kernel": {"0": [0.5, 0.9, -0.2, 0.1, 0.05]}} if conv else {}),
        "smear_sigma": per(lambda l, h: 0.1 + 0.2 * h),
        "ood_period": {"5": 0.4, "10": 0.7, "20": 0.9, "30": 0.85, "35": 0.6},
        "ood_length": {"40": 0.9, "80": 0.95, "160": 0.5},
        "confusing_repeat": 0.3,
    }


@pytest.fixture(scope="module")
def fake_run(trained_2l, tmp_path_factory):
    """A run directory with 20 checkpoints (copies of a real one) and full records with every key."""
    _, _, run, _ = trained_2l
    out = tmp_path_factory.mktemp("fake") / "fake-run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.toml", out / "config.toml")
    last = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1]
    steps = [30 * i for i in range(1, 21)]
    with open(out / "metrics.jsonl", "w") as fh:
        for s in steps:
            shutil.copy(last, out / "checkpoints" / f"step_{s:06d}.safetensors")
            fh.write(json.dumps(fake_full_record(s)) + "\n")
    return out


def test_report_of_trained_run(trained_2l, tmp_path):
    _, _, run, _ = trained_2l
    png = tmp_path / "png"
    path = write_report([run], tmp_path / "r.html", png_dir=png)
    html = path.read_text()
    assert_offline(html)
    assert set(BASE_FIGS) <= figs_in(html)
    assert path.stat().st_size < MAX_BYTES
    names = {p.name for p in png.glob("*.png")}
    assert {f"induction-2l-{f}.png" for f in BASE_FIGS} <= names
    for p in png.glob("*.png"):
        im = Image.open(p)
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    # the attention slider covers every checkpoint
    n_ck = len(list((run / "checkpoints").glob("*.safetensors")))
    assert f'max="{n_ck - 1}"' in html


def test_default_output_path_and_cli(trained_2l, tmp_path, capsys):
    _, _, run, _ = trained_2l
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert write_report([copy]) == copy / "report.html" and (copy / "report.html").exists()
    assert main(["report", str(copy), "-o", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").exists()


def test_every_optional_figure_from_full_records(fake_run, tmp_path):
    png = tmp_path / "png"
    html = write_report([fake_run], tmp_path / "r.html", png_dir=png).read_text()
    assert set(BASE_FIGS + EXTRA_FIGS) <= figs_in(html)
    assert {f"induction-2l-{f}.png" for f in BASE_FIGS + EXTRA_FIGS} <= {p.name for p in png.glob("*.png")}
    assert "could not draw" not in html


def test_size_with_20_checkpoints_and_all_keys(fake_run, tmp_path):
    path = write_report([fake_run], tmp_path / "r.html")
    assert 'max="19"' in path.read_text()  # 20 checkpoints on the slider
    assert path.stat().st_size < MAX_BYTES


def test_missing_keys_do_not_fail(fake_run, tmp_path):
    """Old logs (no full-suite keys, no phase module) still give a report, minus those figures."""
    run = tmp_path / "old"
    shutil.copytree(fake_run, run)
    keep = ("step", "seconds", "lr", "train_loss", "induction_accuracy", "induction_loss")
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in recs))
    html = write_report([run], tmp_path / "r.html").read_text()
    figs = figs_in(html)
    assert {"attention_repeat", "curves"} <= figs and not (set(EXTRA_FIGS) & figs)


def test_several_runs_side_by_side(trained_2l, fake_run, tmp_path):
    _, _, run, _ = trained_2l
    png = tmp_path / "png"
    html = write_report([run, fake_run], tmp_path / "two.html", png_dir=png).read_text()
    assert html.count('data-fig="curves"') == 2 and html.count('data-fig="attention_repeat"') == 2
    assert str(run) in html and str(fake_run) in html
    # same run name twice: PNG names stay distinct
    assert any(p.name.startswith("1-induction-2l") for p in png.iterdir())
    assert any(p.name.startswith("2-induction-2l") for p in png.iterdir())


def test_bad_run_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_report([tmp_path / "nope"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        write_report([tmp_path / "empty"])
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["animate", str(tmp_path / "nope")]) == 2


def test_gif_has_one_frame_per_checkpoint(trained_2l, tmp_path):
    _, _, run, _ = trained_2l
    path = write_gif(run, tmp_path / "a.gif")
    im = Image.open(path)
    n_ck = len(list((run / "checkpoints").glob("*.safetensors")))
    assert im.format == "GIF" and im.n_frames == n_ck
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(im.convert("L").tobytes())
    assert frames[0] != frames[-1]  # attention changes over training


# --------------------------------------------------------------------------- real browser
FIGURE_CHECK = r"""
(() => Array.from(document.querySelectorAll('[data-fig]')).map(el => {
  const r = el.getBoundingClientRect(), img = el.querySelector('img'), cv = el.querySelector('canvas');
  return {id: el.dataset.fig, x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height,
          img: img ? (img.complete && img.naturalWidth > 0) : null,
          canvas: cv ? [cv.width, cv.height] : null};
}))()
"""


def _blank(png: bytes) -> bool:
    im = Image.open(io.BytesIO(png)).convert("L")
    lo, hi = im.getextrema()
    colors = im.getcolors(maxcolors=1 << 16)
    return hi - lo < 30 or (colors is not None and len(colors) < 4)


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not found (apt-get install chromium)")
def test_report_renders_in_headless_chromium(trained_2l, fake_run, tmp_path):
    _, _, run, _ = trained_2l
    path = write_report([run, fake_run], tmp_path / "report.html")
    with Browser() as b:
        b.open(path)
        assert b.console_errors() == []
        urls = b.requests()
        assert urls and all(u == path.resolve().as_uri() or u.startswith("data:") for u in urls), urls
        figs = b.evaluate(FIGURE_CHECK)
        ids = [f["id"] for f in figs]
        for want in BASE_FIGS + EXTRA_FIGS:
            assert want in ids, f"figure {want} missing"
        for f in figs:
            assert f["w"] > 100 and f["h"] > 100, f
            if f["img"] is not None:
                assert f["img"], f"{f['id']}: image did not decode"
            shot = b.screenshot({"x": f["x"], "y": f["y"], "width": f["w"], "height": f["h"]})
            assert not _blank(shot), f"{f['id']} is blank on screen"
        # hovering the attention canvas names a head, a token pair and a value
        cv = b.evaluate("(() => {const r = document.querySelector('.att canvas').getBoundingClientRect();"
                        "window.scrollTo(0, r.top + window.scrollY - 10);"
                        "const s = document.querySelector('.att canvas').getBoundingClientRect();"
                        "return [s.left, s.top, s.width, s.height];})()")
        b.call("Input.dispatchMouseEvent", session=True, type="mouseMoved",
               x=cv[0] + cv[2] * 0.08, y=cv[1] + cv[3] * 0.35)
        tip = b.evaluate("document.querySelector('.att .tip').textContent")
        assert re.search(r"L\d+H\d+ +query \d+ .*key \d+ .*attention (\d\.\d{3}|masked)", tip), tip
        # moving the slider redraws another checkpoint
        before = b.evaluate("document.querySelector('.att canvas').toDataURL()")
        b.evaluate("(() => {const s = document.querySelector('.att input'); s.value = 0;"
                   "s.dispatchEvent(new Event('input')); return s.value;})()")
        assert b.evaluate("document.querySelector('.att .step').textContent").startswith("step ")
        assert b.evaluate("document.querySelector('.att canvas').toDataURL()") != before
        assert b.console_errors() == []


def test_phase_change_is_marked_from_the_real_detector(trained_2l):
    from inductionlab.report.figures import phase_steps
    from inductionlab.report.runs import load_run_data

    _, _, run, _ = trained_2l
    lines, span = phase_steps(load_run_data(run))
    assert lines and span is not None
    # induction-2l's jump happens between steps 100 and 400 (accuracy 0.07 -> 0.94)
    assert all(50 <= x <= 400 for x in lines) and 50 <= span[0] <= span[1] <= 600

"""Assemble one self-contained offline HTML file: PNG figures as ``data:`` URIs, the attention
grid as quantized bytes drawn on a ``<canvas>`` by a small inline script (hover, checkpoint slider).

A Content-Security-Policy meta tag forbids every network request, so the page behaves the same
offline and can never phone home.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

import matplotlib
import numpy as np

from ..checkpoint import atomic_write_text
from ..metrics.heads import HEAD_METRICS
from . import figures as F
from .runs import RunData, Sample, load_run_data

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 1.2em 3em;color:#222;background:#fff}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .2em;border-bottom:1px solid #ddd}
.cap{color:#555;font-size:.88em;max-width:70em;margin:.2em 0 .6em}
.row{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.cell{flex:1 1 0;min-width:320px;max-width:100%}.cell h3{font-size:.9em;margin:.2em 0;color:#333}
.fig img{max-width:100%;height:auto;display:block}.missing{color:#999;font-size:.85em;font-style:italic}
.note{background:#fff7e0;border-left:3px solid #e0a800;padding:.2em .6em;font-size:.85em;margin:.2em 0}
table.sum{border-collapse:collapse;font-size:.85em}table.sum td,table.sum th{border:1px solid #ddd;padding:2px 8px;text-align:left}
.att canvas{image-rendering:pixelated;border:1px solid #ccc;cursor:crosshair;max-width:100%}
.att .ctl{font-size:.85em;margin:.3em 0}.att .tip{font:12px monospace;min-height:1.3em;color:#000}
"""

# The script only reads data embedded in the page; it never fetches anything.
JS = r"""
(function(){
 function b64(s){var r=atob(s),a=new Uint8Array(r.length);for(var i=0;i<r.length;i++)a[i]=r.charCodeAt(i);return a;}
 function setup(el){
  var d=JSON.parse(el.querySelector('script[type="application/json"]').textContent);
  var n=d.labels.length,L=d.layers.length,H=d.heads,px=Math.max(2,Math.floor(d.cell/n)),pad=14,gap=6;
  var pw=n*px,cv=el.querySelector('canvas'),ctx=cv.getContext('2d');
  cv.width=H*(pw+gap)+pad;cv.height=L*(pw+gap+pad);
  var sl=el.querySelector('input'),lab=el.querySelector('.step'),tip=el.querySelector('.tip');
  var frames=d.frames.map(function(f){return {step:f.step,data:null,b64:f.data};});
  var tri=n*(n+1)/2,lut=b64(d.lut);function mag(v){return [lut[3*v],lut[3*v+1],lut[3*v+2]];}
  function frame(i){var f=frames[i];if(!f.data){f.data=b64(f.b64);}return f;}
  function val(f,l,h,q,k){if(k>q)return -1;return f.data[(l*H+h)*tri+q*(q+1)/2+k];}
  function draw(){
   var f=frame(+sl.value);lab.textContent='step '+f.step;
   ctx.fillStyle='#fff';ctx.fillRect(0,0,cv.width,cv.height);
   var img=ctx.createImageData(pw,pw);
   for(var l=0;l<L;l++)for(var h=0;h<H;h++){
    for(var q=0;q<n;q++)for(var k=0;k<n;k++){
     var v=k>q?0:val(f,l,h,q,k),c=k>q?[245,245,245]:mag(v);
     for(var y=0;y<px;y++)for(var x=0;x<px;x++){var o=((q*px+y)*pw+k*px+x)*4;img.data[o]=c[0];img.data[o+1]=c[1];img.data[o+2]=c[2];img.data[o+3]=255;}
    }
    var x0=h*(pw+gap)+pad,y0=l*(pw+gap+pad)+pad;ctx.putImageData(img,x0,y0);
    ctx.fillStyle='#222';ctx.font='11px sans-serif';ctx.fillText('L'+d.layers[l]+'H'+h,x0,y0-3);
   }
  }
  cv.addEventListener('mousemove',function(e){
   var r=cv.getBoundingClientRect(),sx=cv.width/r.width,x=(e.clientX-r.left)*sx,y=(e.clientY-r.top)*sx;
   var h=Math.floor((x-pad)/(pw+gap)),l=Math.floor(y/(pw+gap+pad));
   var k=Math.floor((x-pad-h*(pw+gap))/px),q=Math.floor((y-l*(pw+gap+pad)-pad)/px);
   if(h<0||h>=H||l<0||l>=L||k<0||k>=n||q<0||q>=n){tip.textContent='\u00a0';return;}
   var v=val(frame(+sl.value),l,h,q,k);
   tip.textContent='L'+d.layers[l]+'H'+h+'  query '+q+' "'+d.labels[q]+'"  \u2192  key '+k+' "'+d.labels[k]+'"  attention '+(v<0?'masked':(v/255).toFixed(3));
  });
  cv.addEventListener('mouseleave',function(){tip.textContent='\u00a0';});
  sl.addEventListener('input',draw);draw();
 }
 var els=document.querySelectorAll('.att');for(var i=0;i<els.length;i++){try{setup(els[i]);}catch(e){console.error('attention grid: '+e);}}
})();
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "run"


def attention_payload(sample: Sample, cell: int = 200) -> dict | None:
    """Lower triangles of every ``[head, q, k]`` pattern as uint8 (value*255), base64 per step."""
    if not sample.steps:
        return None
    first = sample.patterns[sample.steps[0]]
    layers = sorted(first)
    heads = max(p.shape[0] for p in first.values())
    n = len(sample.tokens)
    qi, ki = np.tril_indices(n)
    frames = []
    for step in sample.steps:
        pats = sample.patterns[step]
        parts = []
        for l in layers:
            p = pats[l]
            for h in range(heads):
                tri = p[h][qi, ki] if h < p.shape[0] else np.zeros(qi.size)
                parts.append(np.clip(np.round(tri * 255), 0, 255).astype(np.uint8))
        frames.append({"step": step, "data": base64.b64encode(np.concatenate(parts).tobytes()).decode()})
    lut = (matplotlib.colormaps["magma"](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    return {"lut": base64.b64encode(lut.tobytes()).decode(), "labels": sample.labels, "layers": layers, "heads": heads, "cell": cell, "frames": frames}


def attention_html(sample: Sample, fig_id: str, fallback_png: bytes | None) -> str:
    payload = attention_payload(sample)
    if payload is None:
        return '<p class="missing">no checkpoints with attention layers</p>'
    last = len(payload["frames"]) - 1
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    noscript = f"<noscript>{_img(fallback_png, fig_id)}</noscript>" if fallback_png else ""
    return (f'<div class="fig att" data-fig="{fig_id}">'
            f'<div class="ctl">checkpoint: <input type="range" min="0" max="{last}" value="{last}" step="1" '
            f'aria-label="checkpoint"> <span class="step"></span></div>'
            f'<canvas></canvas><div class="tip">&nbsp;</div>'
            f'<script type="application/json">{data}</script>{noscript}</div>')


def _summary_table(runs: list[RunData]) -> str:
    keys = ["headline", "steps", "seconds", "n_params", "induction_accuracy", "induction_loss",
            "val_loss", "val_accuracy", "icl_score", *(m.best for m in HEAD_METRICS.values() if m.best)]
    rows = []
    for k in keys:
        vals = []
        for r in runs:
            v = r.summary.get(k, r.records[-1].get(k if k != "steps" else "step"))
            if isinstance(v, dict) and "metric" in v:  # the headline
                val = v.get("value")
                v = f"{v['metric']} = {val:.4g}" if isinstance(val, (int, float)) else str(v["metric"])
            elif isinstance(v, dict) and "name" in v:
                score = v.get("score")
                v = f"{v['name']} ({score:.3f})" if isinstance(score, (int, float)) else str(v["name"])
            elif isinstance(v, float):
                v = f"{v:.4g}"
            vals.append("" if v is None else html.escape(str(v)))
        if any(vals):
            rows.append(f"<tr><th>{k}</th>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(r.name)}<br><small>{html.escape(str(r.run_dir))}</small></th>"
                                     for r in runs) + "</tr>"
    return f'<table class="sum">{head}{"".join(rows)}</table>'


def build_html(runs: list[RunData], png_dir: Path | None = None) -> str:
    """The report page; also writes every figure as ``png_dir/<run>-<figure>.png`` when asked."""
    names = [_slug(r.name) for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}-{n}" for i, n in enumerate(names)]
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)

    def save(run_i: int, fig_id: str, png: bytes):
        if png_dir is not None:
            (png_dir / f"{names[run_i]}-{fig_id}.png").write_bytes(png)

    sections = []
    # attention grids: one section per sample kind
    kinds = []
    for r in runs:
        for s in r.samples:
            if s.kind not in kinds:
                kinds.append(s.kind)
    for kind in kinds or ["repeat"]:
        cells = []
        for i, r in enumerate(runs):
            s = next((s for s in r.samples if s.kind == kind), None)
            body = '<p class="missing">not available for this run</p>'
            if s is not None and s.steps:
                fig = F.fig_attention_grid(s, s.steps[-1])
                png = F.to_png(fig) if fig is not None else None
                if png:
                    save(i, f"attention_{kind}", png)
                body = attention_html(s, f"attention_{kind}", png)
                body = f'<p class="cap">{html.escape(s.title)}</p>' + body
            notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in r.notes) if kind == kinds[0] else ""
            cells.append(f'<div class="cell"><h3>{html.escape(r.name)}</h3>{notes}{body}</div>')
        title = "Attention patterns on " + ("repeated random tokens" if kind == "repeat" else f"a {kind} sample")
        sections.append(
            f'<h2 id="attention_{kind}">{title}</h2><p class="cap">Every head of every attention layer '
            "(rows: layers, columns: heads; query down, key across; bright = high attention). Hover a cell "
            "for the value and the token pair; drag the slider to move through the checkpoints.</p>"
            f'<div class="row">{"".join(cells)}</div>')
    for fig_id, title, caption, fn in F.STATIC_FIGURES:
        cells, any_fig = [], False
        for i, r in enumerate(runs):
            try:
                fig = fn(r)
            except Exception as exc:  # noqa: BLE001 - one odd record must not sink the report
                fig = None
                r.notes.append(f"{fig_id}: could not draw ({type(exc).__name__}: {exc})")
            if fig is None:
                body = '<p class="missing">not measured in this run</p>'
            else:
                any_fig = True
                png = F.to_png(fig)
                save(i, fig_id, png)
                body = f'<div class="fig" data-fig="{fig_id}">{_img(png, f"{r.name}: {title}")}</div>'
            cells.append(f'<div class="cell"><h3>{html.escape(r.name)}</h3>{body}</div>')
        if any_fig:
            sections.append(f'<h2 id="{fig_id}">{html.escape(title)}</h2><p class="cap">{html.escape(caption)}</p>'
                            f'<div class="row">{"".join(cells)}</div>')
    title = "inductionlab report: " + ", ".join(r.name for r in runs)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"cap\">written {time.strftime('%Y-%m-%d %H:%M')} "
            "by inductionlab; self-contained, works offline.</p>"
            f"{_summary_table(runs)}{''.join(sections)}<script>{JS}</script></body></html>\n")


def write_report(run_dirs: list[Path], out: Path | None = None, png_dir: Path | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` (side by side) to ``out`` (default: the first run's
    ``report.html``); with ``png_dir``, also every figure as a PNG. Returns the HTML path."""
    from .runs import ReportError

    if not run_dirs:
        raise ReportError("report needs at least one run directory")
    runs = [load_run_data(Path(d)) for d in run_dirs]
    out = Path(out) if out is not None else Path(run_dirs[0]) / "report.html"
    text = build_html(runs, Path(png_dir) if png_dir is not None else None)
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise ReportError(f"cannot write report {out}: {exc.strerror or exc}") from None
    return out

"""Re-run the experiments behind docs/results.md and docs/metrics.md and rewrite their tables.

    .venv/bin/python scripts/figures.py results --seeds 0-4 --jobs 2
    .venv/bin/python scripts/figures.py classic --seeds 0-4 --jobs 2
    .venv/bin/python scripts/figures.py metrics --seeds 0-4 --jobs 2
    .venv/bin/python scripts/figures.py all --seeds 0-4 --jobs 2

Each experiment is a list of cells (a preset plus ``--set`` overrides) trained for every seed
into ``runs/figures/<cell>/seed_<k>`` (a run already there is reused, so an interrupted command
can be rerun; ``--fresh`` retrains). The tables give the mean and the 95% t-interval over seeds
(``metrics/stats.py``) and replace the block between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->`` in the docs, headed by the command that made it. Training runs one
process per job with one thread each.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from inductionlab.metrics.stats import fmt_ci, mean_ci  # noqa: E402

OUT = ROOT / "runs" / "figures"


@dataclass
class Cell:
    label: str
    preset: str
    overrides: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-").lower()


# ----------------------------------------------------------------------------- experiments
P20 = ["data.period_min=20", "data.period_max=20"]
RESULTS = [
    Cell("1L (induction-1l)", "induction-1l"),
    Cell("1L fixed (period 20)", "induction-1l", P20),
    Cell("2L (induction-2l)", "induction-2l"),
    Cell("2L fixed (induction-2l-fixed)", "induction-2l-fixed"),
    Cell("smeared-1l", "induction-smeared-1l"),
    Cell("conv-attn (k=5)", "induction-conv-attn"),
]
TO90 = ["train.target_accuracy=0.9"]
CLASSIC = [
    Cell("classic 2L varied, init torch", "induction-2l-classic", ["model.init=torch", *TO90]),
    Cell("classic 2L varied, init transformer-lens", "induction-2l-classic", ["model.init=transformer-lens", *TO90]),
    Cell("classic 2L fixed, init torch", "induction-2l-classic", ["model.init=torch", *P20, "train.target_accuracy=0.95"]),
    Cell("classic 1L fixed, init torch", "induction-2l-classic",
         ["model.init=torch", "model.arch=attn-only-1l", *P20, "train.target_accuracy=0.95"]),
    Cell("classic 1L varied, init torch", "induction-2l-classic", ["model.init=torch", "model.arch=attn-only-1l"]),
    Cell("classic 2L varied, init gpt2 N(0, 0.02)", "induction-2l-classic", ["model.init=gpt2", *TO90]),
]
METRICS = [Cell("2L (induction-2l)", "induction-2l")]
EXPERIMENTS = {"results": RESULTS, "classic": CLASSIC, "metrics": METRICS}


# ----------------------------------------------------------------------------- running
def _train_one(preset: str, overrides: list[str], out: str) -> str:
    from inductionlab.configfile import load_config
    from inductionlab.train import train

    cfg = load_config(preset, [*overrides, "train.threads=1", "train.progress=false"])
    t0 = time.time()
    train(cfg, Path(out), progress=False)
    return f"{out} ({time.time() - t0:.0f} s)"


def run_dir(cell: Cell, seed: int) -> Path:
    return OUT / cell.slug / f"seed_{seed}"


def ensure_runs(cells: list[Cell], seeds: list[int], jobs: int, fresh: bool) -> None:
    import shutil

    todo = []
    for cell in cells:
        for seed in seeds:
            d = run_dir(cell, seed)
            if (d / "summary.json").exists() and not fresh:
                continue
            if d.exists():
                shutil.rmtree(d)  # an interrupted or stale run
            todo.append((cell.preset, [*cell.overrides, f"train.seed={seed}"], str(d)))
    if not todo:
        return
    print(f"training {len(todo)} runs with {jobs} job(s)", file=sys.stderr)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for msg in pool.map(_train_one, *zip(*todo)):
            print(f"  done {msg}", file=sys.stderr)


def summary(cell: Cell, seed: int) -> dict:
    return json.loads((run_dir(cell, seed) / "summary.json").read_text())


def model_of(cell: Cell, seed: int):
    from inductionlab.evaluation import load_run

    return load_run(run_dir(cell, seed))


# ----------------------------------------------------------------------------- tables
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


OOD = (5, 10, 15, 20, 25, 29, 30, 35)


def results_table(seeds: list[int]) -> str:
    from inductionlab.metrics.ood import accuracy_by_length, accuracy_by_period

    rows = []
    for cell in RESULTS:
        steps, acc, first, per, length = [], [], [], {p: [] for p in OOD}, []
        for s in seeds:
            sm = summary(cell, s)
            cfg, model = model_of(cell, s)
            steps.append(sm["steps"])
            acc.append(sm["induction_accuracy"])
            first.append(sm["first_period_loss"])
            for p, a in accuracy_by_period(model, list(OOD), cfg.model.vocab_size, cfg.model.n_ctx, n=128).items():
                per[p].append(a)
            got, _ = accuracy_by_length(model, [2 * cfg.model.n_ctx], cfg.model.vocab_size, cfg.data.period_min,
                                        cfg.data.period_max, n=64)
            length.extend(got.values())
        rows.append([cell.label, f"{cfg.data.period_min}-{cfg.data.period_max}", fmt_ci(steps, 0), fmt_ci(acc),
                     fmt_ci(first, 2), *(fmt_ci(per[p], 2) for p in OOD),
                     fmt_ci(length, 2) if length else "n/a"])
    return table(["model", "train periods", "steps", "in-dist. accuracy", "first-period loss",
                  *(f"P={p}" for p in OOD), "T=160"], rows)


def classic_table(seeds: list[int]) -> str:
    from inductionlab.metrics.ood import accuracy_by_period

    rows = []
    for cell in CLASSIC:
        done = [s for s in seeds if (run_dir(cell, s) / "summary.json").exists()]
        if not done:
            continue
        sms = [summary(cell, s) for s in done]
        reached = [sm["reached_target_at"] for sm in sms if sm["reached_target_at"] is not None]
        target = "0.9" if "train.target_accuracy=0.9" in cell.overrides else (
            "0.95" if "train.target_accuracy=0.95" in cell.overrides else "–")
        off = []
        for s in done:
            cfg, model = model_of(cell, s)
            off.append(accuracy_by_period(model, [25], cfg.model.vocab_size, cfg.model.n_ctx, n=128)[25])
        rows.append([cell.label, str(len(done)), target,
                     f"{len(reached)}/{len(done)}" if target != "–" else "–",
                     fmt_ci(reached, 0) if reached else "–",
                     fmt_ci([sm["steps"] for sm in sms], 0),
                     fmt_ci([sm["induction_accuracy"] for sm in sms]), fmt_ci(off)])
    return table(["cell", "seeds", "target", "reached", "step reached", "steps run", "final accuracy",
                  "accuracy at P=25"], rows)


def _last_full(cell: Cell, seed: int) -> dict:
    lines = (run_dir(cell, seed) / "metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, reversed(lines)) if r.get("full"))


def metrics_table(seeds: list[int]) -> str:
    """The trained induction-2l model's circuit, one column of per-seed values summarised."""
    from inductionlab.evaluation import ablation_study_run
    from inductionlab.metrics.composition import composition_scores_rotary

    cell = METRICS[0]
    rows: dict[str, list[float]] = {}
    digits: dict[str, int] = {}

    def add(label: str, value, d: int = 3) -> None:
        rows.setdefault(label, []).append(value)
        digits[label] = d

    indices = set()
    for s in seeds:
        sm, full = summary(cell, s), _last_full(cell, s)
        add("steps to 95% held-out induction accuracy", sm["steps"], 0)
        add("held-out induction accuracy", sm["induction_accuracy"])
        add("first-period loss (nats; uniform 5.54)", sm["first_period_loss"], 2)
        add("ICL score (nats)", sm["icl_score"], 2)
        indices.add(str(sm["icl_indices"]))
        add("best layer-0 previous-token score", max(full["previous_token"]["0"]))
        pm1 = full["prefix_matching"]["1"]
        best = max(range(len(pm1)), key=pm1.__getitem__)
        add("best layer-1 prefix-matching score", pm1[best])
        add("layer-1 heads with prefix matching >= 0.5", sum(v >= 0.5 for v in pm1), 1)
        comp = full["composition"]
        k = [(v, i, j) for i, row in enumerate(comp["k"]) for j, v in enumerate(row) if v is not None]
        kv, i, j = max(k)
        add("strongest K-composition / random baseline", kv / comp["baseline"]["k"], 2)
        add("  Q-composition of that pair / baseline", comp["q"][i][j] / comp["baseline"]["q"], 2)
        add("  V-composition of that pair / baseline", comp["v"][i][j] / comp["baseline"]["v"], 2)
        cfg, model = model_of(cell, s)
        delta = (cfg.data.period_min + cfg.data.period_max) // 2 - 1
        rot = composition_scores_rotary(model, deltas=(delta,))
        add(f"  rotary K-composition of that pair at Δ = {delta} / its baseline",
            rot["k"][str(delta)][i][j] / rot["baseline"]["k"][str(delta)], 2)
        add("OV positivity of the best induction head", full["ov_positivity"]["1"][best])
        add("copying ratio of the best induction head / chance", full["copying_ratio"]["1"][best] / full["copying_chance"], 1)
        add("copying score of the best induction head", full["copying"]["1"][best])
        add("mean OV positivity of layer-0 heads", sum(full["ov_positivity"]["0"]) / len(full["ov_positivity"]["0"]))
        study = ablation_study_run(run_dir(cell, s), sequences=256)
        add("clean accuracy on the 256 ablation sequences", study["clean"]["induction_accuracy"]["mean"])
        for kind in ("zero", "mean"):
            for group, label in (("L0 previous_token", "layer-0 previous-token heads"),
                                 ("L0 other", "other layer-0 heads (neither previous- nor current-token)"),
                                 ("L0 current_token", "layer-0 current-token heads"),
                                 ("L1 induction", "layer-1 induction heads")):
                if group in study[kind]:
                    add(f"Δ accuracy, {kind}-ablating all {label}", study[kind][group]["induction_accuracy"]["mean"])
        add("Δ accuracy, zero-ablating the best induction head alone",
            study["zero"][f"L1H{best}"]["induction_accuracy"]["mean"])
    body = [[label, fmt_ci(vals, digits[label]), str(len(vals))] for label, vals in rows.items()]
    body.append(["ICL indices [early, late]", ", ".join(sorted(indices)), str(len(seeds))])
    return table(["induction-2l (preset defaults), final checkpoint", "mean ± 95% CI over seeds", "seeds"], body)


TABLES = {"results": results_table, "classic": classic_table, "metrics": metrics_table}
DOCS = {"results": "docs/results.md", "classic": "docs/results.md", "metrics": "docs/metrics.md"}


def write_block(doc: Path, name: str, command: str, body: str) -> None:
    text = doc.read_text()
    begin, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} block")
    block = f"{begin}\n```sh\n{command}\n```\n\n{body}\n{end}"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    doc.write_text(text)


def parse_seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="retrain runs that already exist")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave the docs alone")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        ensure_runs(EXPERIMENTS[name], seeds, args.jobs, args.fresh)
    for name in names:
        body = TABLES[name](seeds)
        command = f".venv/bin/python scripts/figures.py {name} --seeds {args.seeds}"
        print(f"## {name}\n\n{body}\n")
        if not args.no_write:
            write_block(ROOT / DOCS[name], name, command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

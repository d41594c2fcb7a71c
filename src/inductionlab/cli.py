"""Command line: thin wrappers over the library. Bad input -> one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .configfile import load_config, preset_names, resolve_source
from .errors import UserError, one_line


class CLIError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it to one line)
        sys.stderr.write(f"inductionlab: error: {one_line(message)}\n")
        raise SystemExit(2)


def cmd_presets(args) -> int:
    for name in preset_names():
        raw = resolve_source(name)
        desc = raw.get("description", "") if isinstance(raw, dict) else ""
        print(f"{name:28s} {desc}")
    return 0


MAX_SEEDS = 10_000


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"1,3,5"`` -> [1, 3, 5]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                if hi_i - lo_i >= MAX_SEEDS:
                    raise CLIError(f"--seeds: at most {MAX_SEEDS} seeds, got the range '{part.strip()}'")
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise CLIError(f"--seeds expects a range like 0-4 or a list like 0,2,5, got '{text}'") from None
    if len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
        raise CLIError(f"--seeds must list distinct non-negative seeds, got '{text}'")
    return seeds


def _write_report(run_dirs: list[Path], out: Path) -> None:
    from .report import write_report

    try:
        print(f"report: {write_report(run_dirs, out)}")
    except UserError as exc:  # e.g. matplotlib not installed: the run itself is complete
        sys.stderr.write(f"inductionlab: note: no report written: {exc}\n")


def cmd_train(args) -> int:
    from .causality import CausalityError

    if args.resume:
        if args.config:
            raise CLIError("--resume takes the config from RUN_DIR/config.toml; drop CONFIG")
        if args.out:
            raise CLIError("--resume RUN_DIR is the output directory; drop --out")
    elif not args.config:
        raise CLIError("the following arguments are required: config (or --resume RUN_DIR)")
    progress = False if args.quiet else None
    try:
        return _resume(args, progress) if args.resume else _train(args, progress)
    except CausalityError as exc:
        raise CLIError(f"refusing to train: {exc}") from None


def _train(args, progress) -> int:
    from .train import default_run_dir, train, train_seeds

    cfg = load_config(args.config, args.set)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    out = Path(args.out) if args.out else default_run_dir(cfg)
    if seeds is None:
        print(_summary_text(train(cfg, out, progress=progress)))
        if not args.no_report:
            _write_report([out], out / "report.html")
        return 0
    return _seeds_done(args, out, train_seeds(cfg, seeds, out, progress=progress, on_start=_seed_start,
                                              on_done=_seed_done))


def _resume(args, progress) -> int:
    """``--resume RUN_DIR``: a run directory, or a --seeds output directory (docs/reliability.md)."""
    from .runstate import is_seeds_dir, run_finished
    from .train import resume, resume_seeds

    out = Path(args.resume)
    if args.seeds or is_seeds_dir(out):
        seeds = parse_seeds(args.seeds) if args.seeds else None
        return _seeds_done(args, out, resume_seeds(out, seeds, args.set, progress=progress, on_start=_seed_start,
                                                   on_done=_seed_done))
    if run_finished(out):
        try:
            body = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read {out / 'summary.json'}: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(body, dict):
            raise CLIError(f"cannot read {out / 'summary.json'}: not a JSON object")
        steps = body.get("steps")
        print(f"{out}: finished at step {steps}; nothing to resume")
        return 0
    summary = resume(out, args.set, progress=progress)
    print(_summary_text(summary))
    if not args.no_report:
        _write_report([out], out / "report.html")
    return 0


def _seed_start(seed: int, run_dir: Path, status: str) -> None:
    note = {"finished": " (finished: skipped)", "resumed": " (resuming)"}.get(status, "")
    print(f"== seed {seed} -> {run_dir}{note}")


def _seed_done(seed: int, run_dir: Path, summary: dict) -> None:
    print(_summary_text(summary))


def _seeds_done(args, out: Path, summary: dict) -> int:
    from .metrics.seeds import format_seed_summary

    print(format_seed_summary(summary))
    if not args.no_report:
        _write_report([Path(r["run_dir"]) for r in summary["runs"]], out / "report.html")
    return 0


def _summary_text(s: dict) -> str:
    from .evaluation import format_scores

    head = s.get("headline") if isinstance(s.get("headline"), dict) else {}
    lines = [f"run: {s['run_dir']}", f"steps: {s['steps']}  seconds: {s['seconds']}"]
    return "\n".join(lines + format_scores(s, head.get("metric"), per_head=False))


def cmd_eval(args) -> int:
    from .evaluation import evaluate_run, format_scores

    if args.ablation:
        return _eval_ablation(args)
    if args.sequences is not None:
        raise CLIError("--sequences goes with --ablation")
    result = evaluate_run(Path(args.run_dir), checkpoints=args.checkpoints)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for rec in result["checkpoints"]:
        print(f"step {rec['step']}:")
        print("\n".join(" " + line for line in format_scores(rec, result["headline"])))
    return 0


def _eval_ablation(args) -> int:
    from .evaluation import ablation_study_run
    from .metrics import ablation as ab

    if args.checkpoints != "last":
        raise CLIError("--ablation studies the last checkpoint only (drop --checkpoints)")
    result = ablation_study_run(Path(args.run_dir), sequences=256 if args.sequences is None else args.sequences)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"ablation study of {result['run_dir']} at step {result['step']}")
    print(f" roles: {ab.ROLE_RULE}")
    sc = result["scores"]
    first = min(sc["previous_token"], key=int)
    for layer in sc["previous_token"]:
        for key in ("previous_token", "current_token") if layer == first else ("prefix_matching",):
            print(f"  L{layer} {key.replace('_', '-')} score: "
                  + "  ".join(f"H{h}={v:.2f}" for h, v in enumerate(sc[key][layer])))
    print(ab.format_ablation_study(result, result["roles"]))
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_runs, format_table

    print(format_table(compare_runs([Path(r) for r in args.run_dirs])))
    return 0


def cmd_phase(args) -> int:
    from .metrics.seeds import find_run_dirs, format_phase_table, phase_across_seeds

    result = phase_across_seeds(find_run_dirs(args.run_dirs))
    print(json.dumps(result, indent=1) if args.json else format_phase_table(result))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report([Path(r) for r in args.run_dirs], Path(args.output) if args.output else None,
                        png_dir=Path(args.png) if args.png else None)
    print(f"report: {path}")
    return 0


def cmd_animate(args) -> int:
    from .report.animate import write_gif

    path = write_gif(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"animation: {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_transformer_lens

    out = export_transformer_lens(Path(args.run_dir), Path(args.out), step=args.step)
    print(f"exported: {out / 'config.json'}, {out / 'model.safetensors'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inductionlab", description="Train small transformers and watch induction heads form.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    tr = sub.add_parser("train", help="train a preset or a TOML config")
    tr.add_argument("config", nargs="?", help="preset name (see `inductionlab presets`) or path to a .toml file")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.lr=3e-3 (repeatable)")
    tr.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--seeds", help="train several seeds, e.g. 0-4 or 0,2,5, into OUT/seed_K and summarise")
    tr.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    tr.add_argument("--resume", metavar="RUN_DIR",
                    help="continue RUN_DIR (or a --seeds output directory) from its newest complete checkpoint, "
                         "bit-identical on CPU; a finished run is left as it is (exit 0); --set may change only "
                         "operational keys (docs/reliability.md)")
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a run directory: per-head scores and induction accuracy")
    ev.add_argument("run_dir")
    ev.add_argument("--checkpoints", default="last", help="'last' (default) or 'all'")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--ablation", action="store_true",
                    help="ablation study with 95%% intervals: every head and every role group, zero/mean/"
                         "pattern-preserving, on fresh held-out sequences (last checkpoint)")
    ev.add_argument("--sequences", type=int, help="held-out sequences for --ablation (default 256)")
    ev.set_defaults(func=cmd_eval)
    cp = sub.add_parser("compare", help="compare finished runs side by side")
    cp.add_argument("run_dirs", nargs="+")
    cp.set_defaults(func=cmd_compare)
    ph = sub.add_parser("phase", help="which curve changes first: phase-change steps and lags with 95%% "
                                      "t-intervals over runs (e.g. the seeds of --seeds)")
    ph.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories, or a --seeds output directory holding seed_*/ runs")
    ph.add_argument("--json", action="store_true", help="print JSON")
    ph.set_defaults(func=cmd_phase)
    rp = sub.add_parser("report", help="write a self-contained offline HTML report of one or more runs")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("-o", "--output", help="HTML file (default RUN_DIR/report.html of the first run)")
    rp.add_argument("--png", help="also write every figure as a PNG into this directory")
    rp.set_defaults(func=cmd_report)
    an = sub.add_parser("animate", help="GIF of the attention grid across checkpoints")
    an.add_argument("run_dir")
    an.add_argument("-o", "--output", help="GIF file (default RUN_DIR/attention.gif)")
    an.set_defaults(func=cmd_animate)
    ex = sub.add_parser("export", help="export a run's checkpoint to another library (TransformerLens)")
    ex.add_argument("run_dir")
    ex.add_argument("--to", required=True, choices=["transformer-lens"], help="target format")
    ex.add_argument("--out", required=True, help="new (or empty) directory for config.json + model.safetensors")
    ex.add_argument("--step", type=int, help="checkpoint step (default: the last checkpoint)")
    ex.set_defaults(func=cmd_export)
    pr = sub.add_parser("presets", help="list the built-in recipes")
    pr.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.stderr.write("inductionlab: error: a command is required (see inductionlab --help)\n")
        return 2
    try:
        return args.func(args)
    except (UserError, CLIError) as exc:
        sys.stderr.write(f"inductionlab: error: {one_line(exc)}\n")
        return 2
    except OSError as exc:  # a file-system failure on a path the user gave (name too long, no space, ...)
        what = f"cannot access {exc.filename}: {exc.strerror or exc}" if exc.filename else (exc.strerror or str(exc))
        sys.stderr.write(f"inductionlab: error: {one_line(what)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("inductionlab: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

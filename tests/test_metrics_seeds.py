"""Seed summaries from (fake) run directories."""

import json
import math

from inductionlab.metrics.seeds import format_seed_summary, stats, summarize_seeds


def _sig(s, c):
    return 1 / (1 + math.exp(-(math.log10(s) - math.log10(c)) / 0.05))


def _run(path, centre, acc):
    path.mkdir()
    steps = [1, 2, 5, 10, 20, 50] + list(range(100, 1001, 50))
    with open(path / "metrics.jsonl", "w") as fh:
        for s in steps:
            rec = {"step": s, "induction_loss": 5 - 5 * _sig(s, centre), "induction_accuracy": acc * _sig(s, centre),
                   "prefix_matching": {"0": [0.0], "1": [0.9 * _sig(s, centre)]}}
            if s == 1000:
                rec["icl_score"] = -4.0
            fh.write(json.dumps(rec) + "\n")
    (path / "summary.json").write_text(json.dumps({"induction_accuracy": acc}))
    return path


def test_stats():
    s = stats([1.0, 2.0, 3.0, float("nan")])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3 and (s["min"], s["max"]) == (1.0, 3.0)
    assert stats([])["n"] == 0


def test_summarize_and_format(tmp_path):
    dirs = [_run(tmp_path / f"seed_{k}", c, a) for k, (c, a) in enumerate([(300, 0.9), (400, 0.95), (500, 1.0)])]
    d = summarize_seeds(dirs)
    json.dumps(d)
    assert d["phase"]["prefix_matching"]["values"] == [300.0, 400.0, 500.0]
    assert d["phase"]["induction_loss"]["mean"] == 400.0
    assert d["agreement"]["max"] == 0 and d["eval_interval"] == 50
    assert abs(d["final"]["induction_accuracy"]["mean"] - 0.95) < 1e-9
    assert d["final"]["icl_score"]["mean"] == -4.0
    text = format_seed_summary(d)
    assert "3 seeds" in text and "prefix_matching" in text and "400 ± 100" in text

"""On-device tracking of the phase-change curves (metrics/tracking.py) and its use by the trainer."""

import json
import sys

import pytest
import torch

from inductionlab.config import ConfigError
from inductionlab.configfile import load_config
from inductionlab.data.synthetic import EVAL_SEED_OFFSET, RepeatedTokens
from inductionlab.evaluation import load_run
from inductionlab.metrics.heads import best_head, prefix_matching_score, previous_token_score
from inductionlab.metrics.icl import icl_score
from inductionlab.metrics.induction import induction_loss
from inductionlab.metrics.ood import OOD_SEED
from inductionlab.metrics.tracking import CURVES, SEED_OFFSETS, SEQUENCES, Tracker, read_tracking
from inductionlab.models import build_model
from inductionlab.tasks import RepeatTask
from inductionlab.train import eval_steps, train

SHORT = ["train.steps=40", "train.eval_every=20", "train.log_evals=0", "train.track_every=5",
         "train.target_accuracy=0", "train.threads=1", 'train.full_metrics="all"']


def reference(model, cfg) -> dict[str, float]:
    """The four curves computed independently: each curve's own batch rebuilt from its documented
    seed, one forward pass per curve, the existing pure metric functions and ``best_head``."""
    m, d, t = cfg.model, cfg.data, cfg.train
    model.eval()
    out = {}
    with torch.no_grad():
        for name in CURVES:
            gen = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos, "sequence",
                                 "cpu", seed=t.seed + SEED_OFFSETS[name])
            b = gen.sample(SEQUENCES[name])
            if name == "previous_token":
                pats = model.patterns(b.tokens)
                out[name] = best_head({k: previous_token_score(p, d.bos) for k, p in pats.items()})[2]
            elif name == "prefix_matching":
                pats = model.patterns(b.tokens)
                scores = {k: prefix_matching_score(p, b.periods, d.bos) for k, p in pats.items()}
                out[name] = best_head(scores)[2]
            elif name == "induction_loss":
                out[name] = float(induction_loss(model(b.tokens), b.tokens, b.induction_mask))
            else:
                out[name] = icl_score(model(b.tokens), b.tokens)[0]
    return out


def _scrambled_model(cfg):
    """An untrained model with large random weights, so attention patterns are far from uniform."""
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_tracker_values_equal_the_pure_metrics_on_its_own_batches():
    cfg = load_config("induction-2l", ["train.steps=20"])
    model = _scrambled_model(cfg)
    tracker = Tracker(cfg, "cpu")
    model.train()
    got = dict(zip(CURVES, tracker.measure(model).tolist()))
    assert model.training  # train mode restored
    ref = reference(model, cfg)
    assert got == pytest.approx(ref, abs=1e-5), (got, ref)
    assert len(set(round(v, 3) for v in got.values())) == 4  # four different numbers


def test_each_curve_has_its_own_fixed_held_out_batch():
    cfg = load_config("induction-2l", ["train.seed=7"])
    torch.manual_seed(123)
    a = Tracker(cfg, "cpu")
    RepeatTask(cfg, torch.device("cpu")).train_batch(32)  # training data and global RNG consumed
    torch.rand(1000)
    b = Tracker(cfg, "cpu")  # e.g. rebuilt by a resumed run: the same batches
    for name in CURVES:
        assert torch.equal(a.batches[name].tokens, b.batches[name].tokens)
    toks = [a.batches[c].tokens for c in CURVES]
    assert all(not torch.equal(x[:8], y[:8]) for i, x in enumerate(toks) for y in toks[i + 1:])
    held_out = RepeatTask(cfg, torch.device("cpu")).eval_batches[0].tokens
    assert all(not torch.equal(x, held_out[:len(x)]) for x in toks)
    seeds = {cfg.train.seed + off for off in SEED_OFFSETS.values()}
    assert len(seeds) == 4 and cfg.train.seed + EVAL_SEED_OFFSET not in seeds
    assert min(SEED_OFFSETS.values()) > OOD_SEED + 2 * cfg.model.n_ctx  # above every OOD seed
    other = Tracker(load_config("induction-2l", ["train.seed=8"]), "cpu")
    assert not torch.equal(other.batches["induction_loss"].tokens, a.batches["induction_loss"].tokens)
    # the run owns its generators and can save them
    state = a.state_dict()
    c = Tracker(cfg, "cpu")
    c.generators["icl_score"].sample(3)
    c.load_state_dict(state)
    assert torch.equal(c.generators["icl_score"].sample(2).tokens, a.generators["icl_score"].sample(2).tokens)


def test_track_every_is_validated_and_zero_turns_tracking_off():
    with pytest.raises(ConfigError, match="train.track_every must be >= 0"):
        load_config("induction-2l", ["train.track_every=-1"])
    cfg = load_config("induction-2l", ["train.track_every=0"])
    tracker = Tracker(cfg, "cpu")
    tracker.track(build_model(cfg.model), 5)
    assert not tracker.enabled and tracker.flush() == [] and tracker.batches == {}


SYNCS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu", "__format__")


def _caller_module() -> str:
    """Module of the first frame outside torch and this helper (who asked for the value)."""
    f = sys._getframe(2)
    while f is not None and f.f_globals.get("__name__", "").startswith(("torch", __name__)):
        f = f.f_back
    return "" if f is None else f.f_globals.get("__name__", "")


def test_training_tracks_without_host_sync_and_writes_tracking_jsonl(tmp_path, monkeypatch):
    cfg = load_config("induction-2l", SHORT)
    evals = set(eval_steps(cfg))
    assert evals == {20, 40}
    step = {"n": 0}  # optimizer steps started so far (one training batch per step here)
    syncs: list[int] = []
    flushes: list[tuple[int, int]] = []

    real_batch = RepeatTask.train_batch

    def counting_batch(self, batch_size):
        step["n"] += 1
        return real_batch(self, batch_size)

    def spy(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if _caller_module().startswith("inductionlab"):
                syncs.append(step["n"])
            return real(self, *args, **kwargs)
        return wrapper

    real_flush = Tracker.flush

    def counting_flush(self, path=None):
        new = real_flush(self, path)
        flushes.append((step["n"], len(new)))
        return new

    monkeypatch.setattr(RepeatTask, "train_batch", counting_batch)
    monkeypatch.setattr(Tracker, "flush", counting_flush)
    with monkeypatch.context() as mp:
        for name in SYNCS:
            mp.setattr(torch.Tensor, name, spy(name))
        summary = train(cfg, tmp_path / "run", progress=False)
    # every read-back by the project's code happens before training or at an evaluation step ...
    assert set(syncs) <= {0} | evals, sorted(set(syncs))
    assert evals <= set(syncs)  # ... and the spy does see the evaluation-point syncs
    assert flushes[:2] == [(20, 4), (40, 4)]  # rows copied to the host at the evaluations only
    rows = read_tracking(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert all(set(r) == {"step", *CURVES} for r in rows)
    # the values at steps 20 and 40 are those of the checkpoints saved there
    for s in (20, 40):
        _, model = load_run(tmp_path / "run", s)
        row = next(r for r in rows if r["step"] == s)
        assert {c: row[c] for c in CURVES} == pytest.approx(reference(model, cfg), abs=2e-5)
    assert summary["phase_change"]["source"] == "tracking.jsonl"
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_000040.state.pt", weights_only=True)
    assert torch.equal(state["tracker"]["generators"]["icl_score"]["generator"],
                       Tracker(cfg, "cpu").state_dict()["generators"]["icl_score"]["generator"])
    # tracking does not perturb training: the same run untracked logs the same numbers
    off_cfg = load_config("induction-2l", [*SHORT, "train.track_every=0"])
    off = train(off_cfg, tmp_path / "off", progress=False)
    assert not (tmp_path / "off" / "tracking.jsonl").exists()
    assert off["phase_change"]["source"] == "metrics.jsonl"

    def strip(path):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(tmp_path / "run" / "metrics.jsonl") == strip(tmp_path / "off" / "metrics.jsonl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
def test_tracking_on_cuda_never_synchronises():
    cfg = load_config("induction-2l", ["train.steps=20"])
    model = build_model(cfg.model).cuda()
    tracker = Tracker(cfg, torch.device("cuda"))
    tracker.track(model, 5)  # warm-up (allocations, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in (10, 15, 20):
            tracker.track(model, s)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [r["step"] for r in tracker.flush()] == [5, 10, 15, 20]


def test_two_seeds_end_to_end_resolved_phase_change_and_phase_command(tmp_path, capsys):
    """``train induction-2l --seeds 0-1`` with tracking, then ``inductionlab phase``."""
    from inductionlab.cli import main

    out = tmp_path / "seeds"
    assert main(["train", "induction-2l", "--seeds", "0-1", "--out", str(out), "--no-report", "--quiet",
                 "--set", "train.threads=1", "--set", 'train.full_metrics="final"']) == 0
    assert "ordering (tracking.jsonl):" in capsys.readouterr().out  # in the seed summary too
    for seed in (0, 1):
        summary = json.loads((out / f"seed_{seed}" / "summary.json").read_text())
        ph = summary["phase_change"]
        assert ph["source"] == "tracking.jsonl"
        assert summary["reached_target_at"] == summary["steps"]  # stopped at 95% accuracy ...
        for c in CURVES:
            assert ph[c]["source"] == "tracking" and ph[c]["resolution"] == 5
            assert ph[c]["relative_resolution"] <= 0.05, (seed, c, ph[c])
            assert 100 <= ph[c]["step_fit"] < summary["steps"] - 20  # ... after the change
        assert not any(ph[c]["truncated"] for c in ("prefix_matching", "induction_loss", "icl_score"))
    assert main(["phase", str(out)]) == 0
    text = capsys.readouterr().out
    assert "phase change over 2 runs (curves from tracking.jsonl)" in text
    assert "ordering: " in text and "prefix_matching -> icl_score" in text
    assert main(["phase", str(out / "seed_0"), str(out / "seed_1"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_runs"] == 2 and set(d["curves"]) == set(CURVES) and len(d["lags"]) == 6
    assert main(["phase", str(out), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory" in err[0]

"""Never lose a run (docs/reliability.md): kill-and-resume is bit-identical, checkpoints are
complete or ignored, unsafe or damaged files are refused with one line, non-finite losses stop
the run at a resumable point.

The kill tests run the real CLI in a subprocess, SIGKILL it at seeded random moments after it
took the run directory's lock (training has begun) and once inside a checkpoint write (the
``INDUCTIONLAB_TEST_CHECKPOINT_DELAY`` hook holds each temporary file open), check that every
complete checkpoint left on disk loads, resume, and finally compare with an uninterrupted run
trained in this process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inductionlab import checkpoint, runstate
from inductionlab.checkpoint import (
    PERIODIC,
    CheckpointError,
    complete_stems,
    load_state,
    load_weights,
    state_path,
    verify_checkpoint,
)
from inductionlab.cli import main
from inductionlab.configfile import dump_toml, load_config
from inductionlab.evaluation import load_model
from inductionlab.runstate import SUMMARY_TIMING_FIELDS, TIMING_FIELDS, RunError
from inductionlab.train import NAN_STEPS_ENV, resume, train, train_seeds

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop(NAN_STEPS_ENV, None)
ENV.pop(checkpoint.DELAY_ENV, None)

#: a small induction-2l run: 100 steps, a resume point every 10, evaluations every 30
REPEAT = ["train.steps=100", "train.target_accuracy=0", "train.checkpoint_every=10", "train.threads=1",
          "train.batch_size=16", "data.eval_sequences=32", "train.eval_every=30", "train.log_evals=0",
          "train.full_evals=2"]


# --------------------------------------------------------------------------- helpers
def strip(path: Path, fields=TIMING_FIELDS) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in fields} for x in path.read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((run_dir / "checkpoints").glob("step_*.safetensors"))[-1]))


def assert_same_run(ref: Path, got: Path) -> None:
    """Bit-identical final weights; logs, checkpoint names and summary equal but for timing."""
    a, b = final_weights(ref), final_weights(got)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip(ref / "metrics.jsonl") == strip(got / "metrics.jsonl")
    if (ref / "tracking.jsonl").exists():
        assert (ref / "tracking.jsonl").read_bytes() == (got / "tracking.jsonl").read_bytes()
    names = lambda d: sorted(p.name for p in (d / "checkpoints").iterdir())  # noqa: E731
    assert names(ref) == names(got)  # analysis checkpoints + final; no periodic left, no temporaries
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    for s in (sa, sb):
        for k in (*SUMMARY_TIMING_FIELDS, "run_dir"):
            s.pop(k)
    assert sa == sb
    sta = torch.load(ref / "checkpoints" / f"step_{sa['steps']:06d}.state.pt", weights_only=True)
    stb = torch.load(got / "checkpoints" / f"step_{sb['steps']:06d}.state.pt", weights_only=True)
    for part in ("optimizer", "task", "tracker"):  # the saved training state too
        assert _equal(sta[part], stb[part]), part


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_checkpoints_load(run_dir: Path) -> int:
    """Every complete checkpoint on disk verifies and loads (weights into the model, state safely);
    files without a sidecar are the only leftovers. Returns how many were checked."""
    if not (run_dir / "config.toml").exists():
        return 0
    cfg = load_config(str(run_dir / "config.toml"))
    n = 0
    for d in (run_dir / "checkpoints", run_dir / "checkpoints" / PERIODIC):
        for stem in complete_stems(d) if d.is_dir() else []:
            verify_checkpoint(stem)
            load_model(cfg, stem.with_suffix(".safetensors"))
            if state_path(stem).exists():
                assert {"optimizer", "task", "tracker", "loop", "logs", "compat"} <= load_state(state_path(stem)).keys()
            n += 1
    return n


def _wait(proc, cond, timeout=600.0) -> bool:
    """Poll until ``cond()`` or the process exits; True if ``cond()`` held first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def _start(args: list[str], delay: float = 0.0):
    env = dict(ENV)
    if delay:
        env[checkpoint.DELAY_ENV] = str(delay)
    return subprocess.Popen([sys.executable, "-m", "inductionlab", "train", *args, "--no-report", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _writing(run_dir: Path, kind: str) -> bool:
    """A ``kind`` temporary file (safetensors, state.pt, json) of a checkpoint exists."""
    return any(f".{kind}." in p.name for d in (run_dir / "checkpoints", run_dir / "checkpoints" / PERIODIC)
               if d.is_dir() for p in d.glob("step_*.tmp"))


def _newest(run_dir: Path, since: float = 0.0) -> int:
    """Step of the newest complete periodic resume point (written after ``since``; 0 if none)."""
    d = run_dir / "checkpoints" / PERIODIC
    steps = []
    for p in d.glob("step_*.json") if d.is_dir() else []:
        try:
            if p.stat().st_mtime >= since:
                steps.append(int(p.stem[5:]))
        except FileNotFoundError:  # pruned meanwhile
            pass
    return max(steps, default=0)


def kill_and_resume(first: list[str], resume_args: list[str], run_dirs: list[Path], plan: list, seed: int) -> int:
    """Run ``first``, then ``--resume`` until the run finishes, SIGKILLing it per ``plan``:
    ``("step", i, s)`` kills at a seeded random moment between the resume point of step ``s`` (or,
    if the run resumes at or after ``s``, the first one this process writes) in ``run_dirs[i]``
    and the next one (a random fraction of the measured checkpoint interval after it);
    ``("write", kind)`` kills while a ``kind`` temporary file of a checkpoint exists (the
    delay hook holds it open). After every kill each complete checkpoint on disk must load.
    Returns the number of kills that landed before the run finished."""
    rng = random.Random(seed)
    args, kills, plan = first, 0, list(plan)
    while True:
        item = plan.pop(0) if plan else None
        floor = [_newest(d) for d in run_dirs]  # resume points on disk before this process
        t0 = time.time() - 0.01
        proc = _start(args, delay=0.3 if item and item[0] == "write" else 0.0)
        args = resume_args
        if item is None:
            _, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err
            return kills
        if item[0] == "write":
            hit = _wait(proc, lambda: any(_writing(d, item[1]) for d in run_dirs))
        else:
            d, seen = run_dirs[item[1]], {}
            target = max(item[2], floor[item[1]] + 1)

            def reached() -> bool:
                newest = _newest(d, since=t0)
                seen.setdefault(newest, time.monotonic())
                return newest >= target
            hit = _wait(proc, reached)
            times = sorted(seen.values())
            interval = times[-1] - times[-2] if len(times) >= 3 else 0.3  # first entry is "none yet"
            time.sleep(rng.uniform(0.0, interval))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # finished before the kill
            return kills
        assert proc.returncode == -signal.SIGKILL, err
        kills += hit
        for run_dir in run_dirs:
            assert_checkpoints_load(run_dir)


def random_targets(rng: random.Random, steps: int, every: int, n: int) -> list[int]:
    """``n`` distinct resume-point steps, leaving two intervals before the end (kills land in time)."""
    return sorted(rng.sample(range(every, steps - every, every), n))


# --------------------------------------------------------------------------- kill and resume
def test_kill_and_resume_repeat_run_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    train(load_config("induction-2l", REPEAT), ref, progress=False)
    out = tmp_path / "run"
    sets = [x for s in REPEAT for x in ("--set", s)]
    a, b, c, d, e = (("step", 0, s) for s in random_targets(random.Random(0), 100, 10, 5))
    plan = [a, b, ("write", "state.pt"), c, d, e]  # state.pt: weights renamed, state and sidecar not yet
    kills = kill_and_resume(["induction-2l", "--out", str(out), *sets], ["--resume", str(out)], [out], plan, seed=0)
    assert kills == 6  # five random moments and one inside a checkpoint write
    assert_same_run(ref, out)
    assert not (out / "checkpoints" / PERIODIC).exists()  # a finished run keeps its final state only


def _corpus(root: Path) -> Path:
    words = ("the cat sat on a mat while the dog ran after it and then both of them fell asleep near "
             "an old red barn at the edge of a quiet village").split()
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(6):
        (root / f"train_{i}.txt").write_text(" ".join(words[j] for j in rng.integers(0, len(words), 3000)) + "\n")
    (root / "valid.txt").write_text(" ".join(words[j] for j in rng.integers(0, len(words), 3000)) + "\n")
    return root


def test_kill_and_resume_text_run_is_bit_identical(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    cfg = load_config("wikitext-conv-attn-cpu", [
        f"data.corpus={json.dumps(str(corpus))}", "data.tokenizer=bpe", "data.bpe_vocab=300",
        f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", "data.max_eval_tokens=1024",
        "model.d_model=32", "model.n_heads=2", "model.n_ctx=64", "train.batch_size=8", "train.steps=120",
        "train.warmup=2", "train.eval_every=20", "train.log_evals=0", 'train.full_metrics="log"',
        "train.full_evals=2", "train.checkpoint_every=10", "train.threads=1"])
    toml = tmp_path / "text.toml"
    toml.write_text(dump_toml(cfg))
    ref = tmp_path / "ref"
    train(load_config(str(toml)), ref, progress=False)  # also fills the tokenizer and token caches
    out = tmp_path / "run"
    a, b, c = (("step", 0, s) for s in random_targets(random.Random(1), 90, 10, 3))
    plan = [a, ("write", "json"), b, ("write", "state.pt"), c]  # json: weights and state renamed, sidecar not yet
    kills = kill_and_resume([str(toml), "--out", str(out)], ["--resume", str(out)], [out], plan, seed=1)
    assert kills == 5  # three random moments and two inside checkpoint writes
    assert_same_run(ref, out)


def test_kill_and_resume_seeds(tmp_path, capsys):
    over = [*REPEAT[:-3], "train.steps=60", "train.eval_every=30", "train.log_evals=0", 'train.full_metrics="final"']
    ref = tmp_path / "ref"
    ref_summary = train_seeds(load_config("induction-2l", over), [0, 1], ref, progress=False)
    out = tmp_path / "seeds"
    sets = [x for s in over for x in ("--set", s)]
    dirs = [out / "seed_0", out / "seed_1"]
    # safetensors: nothing renamed yet; the first two kills land in seed 0, the last two in seed 1
    plan = [("write", "safetensors"), ("step", 0, 30), ("write", "state.pt"), ("step", 1, 20), ("step", 1, 40)]
    kills = kill_and_resume(["induction-2l", "--out", str(out), "--seeds", "0-1", *sets],
                            ["--resume", str(out), "--seeds", "0-1"], dirs, plan, seed=2)
    assert kills == 5
    for d in dirs:
        assert_same_run(ref / d.name, d)
    got = json.loads((out / "seeds_summary.json").read_text())
    for s in (got, ref_summary):
        for r in s["runs"]:
            r.pop("run_dir")
    assert got == json.loads(json.dumps(ref_summary))
    # resuming a finished seeds directory skips every seed and changes nothing
    before = (out / "seed_0" / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(out), "--no-report", "--quiet"]) == 0
    assert capsys.readouterr().out.count("(finished: skipped)") == 2
    assert (out / "seed_0" / "metrics.jsonl").read_bytes() == before


# --------------------------------------------------------------------------- a small run for the rest
SMALL = ["train.steps=30", "train.target_accuracy=0", "train.checkpoint_every=5", "train.threads=1",
         "train.batch_size=16", "data.eval_sequences=32", "train.eval_every=10", "train.log_evals=0",
         "train.full_evals=2"]


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "ref"
    train(load_config("induction-2l", SMALL), out, progress=False)
    return out


@pytest.fixture(scope="module")
def _stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(NAN_STEPS_ENV, "18")
        with pytest.raises(RunError):
            train(load_config("induction-2l", SMALL), out, progress=False)
    return out


@pytest.fixture
def killed(_stopped, tmp_path):
    """A copy of a SMALL run stopped at step 20 (a NaN at step 18; newest resume point: step 15)."""
    shutil.copytree(_stopped, tmp_path / "run")
    return tmp_path / "run"


def one_error_line(capsys, *argv) -> str:
    rc = main(list(argv))
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], (rc, err)
    return err[0]


def test_nonfinite_loss_stops_naming_the_step_and_resume_finishes(tmp_path, monkeypatch, capsys, small_ref):
    out = tmp_path / "run"
    sets = [x for s in SMALL for x in ("--set", s)]
    monkeypatch.setenv(NAN_STEPS_ENV, "13")
    line = one_error_line(capsys, "train", "induction-2l", "--out", str(out), "--quiet", "--no-report", *sets)
    assert "not finite" in line and "at step 13" in line and "last good checkpoint is step 10" in line
    stems = complete_stems(out / "checkpoints" / PERIODIC)
    assert [s.name for s in stems] == ["step_000005", "step_000010"]  # none after the bad step
    assert not (out / "summary.json").exists()
    monkeypatch.delenv(NAN_STEPS_ENV)
    assert main(["train", "--resume", str(out), "--quiet", "--no-report"]) == 0
    assert_same_run(small_ref, out)


def test_skip_nonfinite_skips_a_bounded_number_of_steps(tmp_path, monkeypatch):
    monkeypatch.setenv(NAN_STEPS_ENV, "13,14")
    s = train(load_config("induction-2l", [*SMALL, "train.skip_nonfinite=2"]), tmp_path / "a", progress=False)
    assert s["steps"] == 30 and s["skipped_nonfinite"] == 2 and np.isfinite(s["train_loss"])
    rec = {r["step"]: r for r in strip(tmp_path / "a" / "metrics.jsonl")}
    assert "skipped_nonfinite" not in rec[10] and rec[20]["skipped_nonfinite"] == 2
    monkeypatch.setenv(NAN_STEPS_ENV, "13,14,16")
    with pytest.raises(RunError, match=r"at step 16 \(more than train.skip_nonfinite=2 such steps\)"):
        train(load_config("induction-2l", [*SMALL, "train.skip_nonfinite=2"]), tmp_path / "b", progress=False)


# --------------------------------------------------------------------------- safe loading
class Payload:
    """Unpickling this creates ``marker``: proof that a loader executed the file's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_sidecar(stem: Path, kind: str) -> None:
    """What an attacker who also edits the sidecar would do: matching size, sha256 and checksum."""
    side = stem.with_suffix(".json")
    body = json.loads(side.read_text())
    path = state_path(stem) if kind == "state" else stem.with_suffix(".safetensors")
    body["files"][kind].update(checkpoint._digest(path.read_bytes()))
    body["checksum"] = checkpoint._checksum(body)
    side.write_text(json.dumps(body))


@pytest.mark.parametrize("how", ["raw-pickle", "torch-save-with-sidecar"])
def test_pickle_payload_state_is_refused_and_never_runs(killed, tmp_path, capsys, how):
    marker = tmp_path / "PAYLOAD-RAN"
    stem = complete_stems(killed / "checkpoints" / PERIODIC)[-1]
    if how == "raw-pickle":  # the sidecar's sha256 no longer matches: refused before unpickling
        state_path(stem).write_bytes(pickle.dumps({"optimizer": Payload(marker)}))
        fragment = "does not match its sidecar"
    else:  # sidecar rewritten to match: the weights_only loader refuses the object itself
        torch.save({"optimizer": Payload(marker)}, state_path(stem))
        _rewrite_sidecar(stem, "state")
        fragment = "weights_only=True, rejected it; nothing was executed"
    with pytest.raises(CheckpointError, match="refus|does not match"):
        load_state(state_path(stem))
    line = one_error_line(capsys, "train", "--resume", str(killed), "--quiet", "--no-report")
    assert fragment in line and stem.name in line
    assert not marker.exists()
    # real pickle bytes: plain pickle.loads would have run the payload
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_truncated_weights_and_tampered_sidecar_are_refused(killed, capsys):
    stem = complete_stems(killed / "checkpoints" / PERIODIC)[-1]
    weights = stem.with_suffix(".safetensors")
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    line = one_error_line(capsys, "train", "--resume", str(killed), "--quiet")
    assert "does not match its sidecar" in line and weights.name in line
    _rewrite_sidecar(stem, "safetensors")  # even with a matching sidecar the file is not loadable
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(weights)
    weights.write_bytes(good)
    side = stem.with_suffix(".json")
    _rewrite_sidecar(stem, "safetensors")
    body = json.loads(side.read_text())
    body["step"] = 999  # an edit that keeps the file hashes
    side.write_text(json.dumps(body))
    line = one_error_line(capsys, "train", "--resume", str(killed), "--quiet")
    assert "was modified after it was written" in line
    side.write_text("{not json")
    assert "unreadable" in one_error_line(capsys, "train", "--resume", str(killed), "--quiet")
    # the analysis path refuses a tampered sidecar the same way
    ana = complete_stems(killed / "checkpoints")[-1].with_suffix(".json")
    ana.write_text(ana.read_text().replace('"n_params": ', '"n_params": 1'))
    assert "was modified after it was written" in one_error_line(capsys, "eval", str(killed), "--checkpoints", "all")


# --------------------------------------------------------------------------- guards
def test_failed_write_leaves_nothing_trusted_and_resume_finishes(tmp_path, monkeypatch, small_ref):
    real = checkpoint.atomic_write

    def disk_full(path, write):
        if Path(path).name == "step_000020.state.pt":  # half the bytes reach the disk, then ENOSPC
            def half(fh):
                fh.write(b"x" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, half)
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    out = tmp_path / "run"
    with pytest.raises(RunError) as exc:
        train(load_config("induction-2l", SMALL), out, progress=False)
    msg = str(exc.value)
    assert "No space left on device" in msg and "last complete resume point is step 15" in msg and "\n" not in msg
    periodic = out / "checkpoints" / PERIODIC
    assert not list(periodic.glob("*.tmp")) and not (periodic / "step_000020.json").exists()
    assert (periodic / "step_000020.safetensors").exists()  # renamed, but without a sidecar: ignored
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    resume(out, progress=False)
    assert_same_run(small_ref, out)


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(runstate.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=1000))
    with pytest.raises(RunError, match="not enough free space"):
        train(load_config("induction-2l", SMALL), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_refuses_other_configs_versions_and_concurrent_runs(killed, monkeypatch, capsys):
    line = one_error_line(capsys, "train", "--resume", str(killed), "--set", "train.lr=1e-2")
    assert "differs" in line and "train.lr" in line
    cfg_path = killed / "config.toml"
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace("batch_size = 16", "batch_size = 8"))
    assert "train.batch_size" in one_error_line(capsys, "train", "--resume", str(killed))
    cfg_path.write_text(text)
    monkeypatch.setattr(runstate, "__version__", "9.9.9")
    line = one_error_line(capsys, "train", "--resume", str(killed))
    assert "written by inductionlab 0.1.0" in line and "this is inductionlab 9.9.9" in line
    monkeypatch.undo()
    with open(killed / ".lock", "a") as fh:  # another process is training this directory
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "another process" in one_error_line(capsys, "train", "--resume", str(killed))
    assert "is not a run directory" in one_error_line(capsys, "train", "--resume", str(killed / "nope"))
    assert "drop CONFIG" in one_error_line(capsys, "train", "induction-2l", "--resume", str(killed))
    # operational keys may change; a finished run says so and exits 0
    assert main(["train", "--resume", str(killed), "--quiet", "--no-report", "--set", "train.keep_last=1"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(killed)]) == 0
    assert "finished at step 30; nothing to resume" in capsys.readouterr().out


def test_periodic_checkpoints_are_pruned_and_time_based(tmp_path):
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    t = load_config("induction-2l", ["train.checkpoint_every=0", "train.checkpoint_minutes=1"]).train
    clock = Clock()
    policy = runstate.CheckpointPolicy(t, clock=clock)
    assert policy.enabled and not policy.due(7)
    clock.now = 61
    assert policy.due(8)
    policy.written()
    assert not policy.due(9)
    off = runstate.CheckpointPolicy(load_config("induction-2l", ["train.checkpoint_every=0",
                                                                 "train.checkpoint_minutes=0"]).train)
    assert not off.enabled
    # keep_last: while the run goes on only the newest resume points stay
    out = tmp_path / "run"
    with pytest.raises(RunError):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(NAN_STEPS_ENV, "28")
            train(load_config("induction-2l", [*SMALL, "train.keep_last=3"]), out, progress=False)
    assert [s.name for s in complete_stems(out / "checkpoints" / PERIODIC)] == \
        ["step_000015", "step_000020", "step_000025"]


def test_kill_between_final_checkpoint_and_summary_only_writes_the_summary(small_ref, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(small_ref, out)
    (out / "summary.json").unlink()
    final = out / "checkpoints" / "step_000030.state.pt"
    before = final.read_bytes()
    s = resume(out, progress=False)
    assert s["steps"] == 30 and final.read_bytes() == before  # the final checkpoint was not rewritten
    assert_same_run(small_ref, out)

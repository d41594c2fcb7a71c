"""The CLI: real subprocesses, bad input -> one line on stderr, exit code 2, no traceback."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inductionlab", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=ENV)


def assert_one_line_error(r, fragment):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr


@pytest.mark.parametrize("args, fragment", [
    (["train", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["train", "induction-2l", "--set", "model.nope=1"], "unknown config key 'model.nope'"),
    (["train", "induction-2l", "--set", "no.such.key=1"], "unknown config key"),
    (["train", "induction-2l", "--set", "train.steps=abc"], "train.steps: expected an integer"),
    (["train", "induction-2l", "--set", "model.d_model=30"], "not divisible by model.n_heads"),
    (["train", "induction-2l", "--set", "data.period_max=60"], "longer than the context"),
    (["train", "induction-2l", "--set", "model.arch=transformer-xl"], "unknown architecture"),
    (["train", "induction-conv-attn", "--set", "model.conv_padding=same"], "refusing to train"),
    (["eval", "/no/such/run"], "not a run directory"),
    (["train"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input(tmp_path, args, fragment):
    r = cli(*args, "--out", str(tmp_path / "o")) if args[0] == "train" and len(args) > 1 else cli(*args)
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_bad_toml_and_unwritable_out(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("broken = [toml\n")
    assert_one_line_error(cli("train", str(bad)), "invalid TOML")
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert_one_line_error(cli("train", "induction-2l", "--out", str(blocker / "sub")), "cannot write")
    assert blocker.read_text() == "keep me"


def test_train_eval_presets_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "induction-2l", "--out", str(out), "--quiet", "--set", "train.steps=40",
            "--set", "train.eval_every=20")
    assert r.returncode == 0, r.stderr
    assert "induction_accuracy" in r.stdout and "best induction head" in r.stdout
    again = cli("train", "induction-2l", "--out", str(out), "--set", "train.steps=40")
    assert_one_line_error(again, "already holds a run")
    e = cli("eval", str(out))
    assert e.returncode == 0 and "prefix-matching score per head" in e.stdout and "L1:" in e.stdout
    j = json.loads(cli("eval", str(out), "--json").stdout)
    assert [c["step"] for c in j["checkpoints"]] == [40]
    every = json.loads(cli("eval", str(out), "--json", "--checkpoints", "all").stdout)["checkpoints"]
    assert [c["step"] for c in every] == [20, 40]  # the full-suite evaluations kept a checkpoint
    assert all("composition" in c and "ablation" in c and "prefix_matching" in c for c in every)
    p = cli("presets")
    assert p.returncode == 0 and "induction-2l-classic" in p.stdout and len(p.stdout.splitlines()) >= 6


def test_corrupt_checkpoint_is_one_line(tmp_path):
    out = tmp_path / "run"
    assert cli("train", "induction-2l", "--out", str(out), "--quiet", "--set", "train.steps=5",
               "--set", "train.eval_every=5").returncode == 0
    ck = next((out / "checkpoints").glob("*.safetensors"))
    ck.write_bytes(b"\x00garbage")
    assert_one_line_error(cli("eval", str(out)), "cannot read checkpoint")


def test_seeds_train_each_seed_and_summarise(tmp_path):
    out = tmp_path / "multi"
    r = cli("train", "induction-2l", "--out", str(out), "--quiet", "--no-report", "--seeds", "0-1",
            "--set", "train.steps=30", "--set", "train.eval_every=10")
    assert r.returncode == 0, r.stderr
    s0 = json.loads((out / "seed_0" / "summary.json").read_text())
    s1 = json.loads((out / "seed_1" / "summary.json").read_text())
    assert s0["train_loss"] != s1["train_loss"]  # different seeds really ran
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert len(summary["runs"]) == 2
    final = summary["final"]["induction_accuracy"]
    assert final["n"] == 2 and final["mean"] == pytest.approx(
        (s0["induction_accuracy"] + s1["induction_accuracy"]) / 2, abs=1e-3)
    assert "mean" in r.stdout or "±" in r.stdout
    for bad in ("x", "3-1", "0,0", "-2"):
        assert_one_line_error(cli("train", "induction-2l", "--out", str(tmp_path / "b"), "--seeds", bad), "--seeds")


def test_checkpoint_of_another_model_config_is_refused(tmp_path):
    out = tmp_path / "run"
    assert cli("train", "induction-2l", "--out", str(out), "--quiet", "--no-report", "--set", "train.steps=5",
               "--set", "train.eval_every=5").returncode == 0
    cfg = out / "config.toml"
    cfg.write_text(cfg.read_text().replace('positions = "rotary"', 'positions = "none"'))
    assert_one_line_error(cli("eval", str(out)), "different model config (differs in: positions)")

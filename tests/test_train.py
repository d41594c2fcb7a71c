"""Behaviour of the training loop: the 2-layer model solves induction, the 1-layer one cannot."""

import json

import pytest
import torch
from safetensors.torch import load_file

from inductionlab.configfile import load_config
from inductionlab.evaluation import load_run
from inductionlab.metrics.ood import accuracy_by_period
from inductionlab.train import RunError, eval_steps, full_metric_steps, lr_factor, train


def run(tmp_path, preset, *overrides):
    return train(load_config(preset, list(overrides)), tmp_path / preset, progress=False)


def test_induction_2l_preset_forms_induction_heads(tmp_path):
    s = run(tmp_path, "induction-2l")
    assert s["induction_accuracy"] >= 0.95
    assert s["reached_target_at"] == s["steps"]
    # trained on every position, the unpredictable first period stays near uniform guessing
    # (ln 255 = 5.54 nats): no shortcut on the copy boundary
    assert 5.0 <= s["first_period_loss"] <= 6.2
    prev, ind = s["best_previous_token_head"], s["best_induction_head"]
    assert prev["layer"] == 0 and prev["score"] >= 0.5
    assert ind["layer"] == 1 and ind["score"] >= 0.5
    d = tmp_path / "induction-2l"
    assert (d / "config.toml").exists() and (d / "summary.json").exists()
    records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 1 and records[-1]["step"] == s["steps"]
    assert records[0]["induction_accuracy"] < 0.1  # it really learned during this run
    # the phase change is detected where accuracy jumps (between the last record below 0.5 and
    # the first above it, give or take one evaluation interval)
    below = max(r["step"] for r in records if r["induction_accuracy"] < 0.5)
    above = min(r["step"] for r in records if r["induction_accuracy"] >= 0.5)
    step = s["phase_change"]["induction_loss"]["step"]
    assert below - 50 <= step <= above + 50
    ck = d / "checkpoints" / f"step_{s['steps']:06d}.safetensors"
    assert "blocks.1.attn.W_Q" in load_file(str(ck))
    meta = json.loads(ck.with_suffix(".json").read_text())
    assert meta["step"] == s["steps"] and meta["config"]["name"] == "induction-2l"


def test_classic_preset_reproduces_its_study(tmp_path):
    """The informal study's settings (lr 1e-3 constant, no LayerNorm, learned positions) with
    PyTorch-default initialisation pass 0.9 well within the preset's 20,000 steps."""
    s = run(tmp_path, "induction-2l-classic", "train.target_accuracy=0.9", "train.eval_every=250")
    assert s["reached_target_at"] is not None and s["reached_target_at"] <= 5000
    assert s["induction_accuracy"] >= 0.9


def test_one_layer_cannot_do_induction(tmp_path):
    s = run(tmp_path, "induction-1l")
    assert s["induction_accuracy"] < 0.3
    assert s["best_induction_head"]["score"] < 0.3


@pytest.mark.parametrize("preset", ["induction-smeared-1l", "induction-conv-attn"])
def test_one_attention_layer_suffices_when_keys_see_the_previous_token(tmp_path, preset):
    s = run(tmp_path, preset)
    assert s["induction_accuracy"] >= 0.9


def test_fixed_period_model_memorises_the_offset(tmp_path):
    s = run(tmp_path, "induction-2l-fixed")
    _, model = load_run(tmp_path / "induction-2l-fixed")
    acc = accuracy_by_period(model, list(range(20, 30)), 256, 80)
    assert s["induction_accuracy"] >= 0.95 and acc[20] >= 0.95
    assert max(acc[p] for p in range(21, 30)) <= 0.2


def test_training_is_deterministic(tmp_path):
    over = ["train.steps=60", "train.eval_every=20", "train.target_accuracy=0"]
    a = train(load_config("induction-2l", over), tmp_path / "a", progress=False)
    b = train(load_config("induction-2l", over), tmp_path / "b", progress=False)

    def strip(path):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in path.read_text().splitlines()]

    assert strip(tmp_path / "a" / "metrics.jsonl") == strip(tmp_path / "b" / "metrics.jsonl")
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_000060.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_000060.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["train_loss"] == b["train_loss"]
    c = train(load_config("induction-2l", over + ["train.seed=1"]), tmp_path / "c", progress=False)
    assert c["train_loss"] != a["train_loss"]


def test_existing_run_is_never_overwritten(tmp_path):
    over = ["train.steps=5", "train.eval_every=5"]
    train(load_config("induction-2l", over), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(RunError, match="already holds a run"):
        train(load_config("induction-2l", over), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_schedule_and_eval_steps():
    cfg = load_config("induction-2l", ["train.steps=1000", "train.warmup=100", "train.eval_every=100",
                                       "train.min_lr_frac=0.1", "train.log_evals=10"])
    assert lr_factor(0, cfg) == pytest.approx(0.01) and lr_factor(99, cfg) == pytest.approx(1.0)
    assert lr_factor(999, cfg) == pytest.approx(0.1, abs=1e-3)
    steps = eval_steps(cfg)
    assert steps[0] == 1 and steps[-1] == 1000 and {100, 500, 1000} <= set(steps)
    assert len([s for s in steps if s < 100]) >= 5  # log-spaced early evaluations
    full = full_metric_steps(cfg)
    assert 1000 in full and 100 in full and full <= set(steps)


def test_loss_on_induction_is_an_explicit_option(tmp_path):
    """``loss_on = "induction"`` trains only on predictions made from a repeated token; the
    default objective covers every position."""
    from inductionlab.data.synthetic import RepeatedTokens, induction_mask
    from inductionlab.tasks import make_task
    from inductionlab.train import training_loss

    for preset in ("induction-2l", "induction-1l", "induction-2l-classic", "induction-conv-attn"):
        assert load_config(preset).train.loss_on == "all"
    cfg = load_config("induction-2l", ["train.loss_on=induction"])
    task = make_task(cfg, torch.device("cpu"))
    tokens, mask = task.train_batch(8)
    d = cfg.data
    ref = RepeatedTokens(256, 80, d.period_min, d.period_max, d.bos, d.period_mode, seed=cfg.train.seed).sample(8)
    assert torch.equal(tokens, ref.tokens)
    assert torch.equal(mask, induction_mask(ref.periods, tokens.shape[1], True))
    # logits right on the masked predictions and wrong elsewhere: zero masked loss, large full loss
    logits = torch.zeros(*tokens.shape, 256)
    logits[:, :-1].scatter_(-1, tokens[:, 1:, None], 50.0)
    logits[:, :-1][~mask] = 0.0
    logits[:, :-1][~mask] = logits[:, :-1][~mask].scatter(-1, (tokens[:, 1:][~mask][:, None] + 1) % 256, 50.0)
    assert float(training_loss(logits, tokens, mask)) < 1e-6
    assert float(training_loss(logits, tokens, None)) > 10
    assert make_task(load_config("induction-2l"), torch.device("cpu")).train_batch(8)[1] is None

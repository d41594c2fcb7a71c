"""Head ablations: batched results equal one pass per head; known answers on simple models; the
ablation study (intervals over sequences) on trained models, asserted in both directions: some
ablations must destroy induction and others must not."""

import json

import pytest
import torch

from inductionlab.cli import main
from inductionlab.configfile import load_config
from inductionlab.data.synthetic import EVAL_SEED_OFFSET, RepeatedTokens
from inductionlab.errors import UserError
from inductionlab.metrics.ablation import (CURRENT_TOKEN_THRESHOLD, INDUCTION_THRESHOLD, KINDS,
                                           PREVIOUS_TOKEN_THRESHOLD, AblationError, ablate_heads,
                                           ablation_study, bootstrap_interval, classify_heads,
                                           current_token_score, head_ablation, head_scores,
                                           per_sequence_scores, role_groups, scores)
from inductionlab.metrics.heads import prefix_matching_score, prefix_matching_targets
from inductionlab.metrics.icl import icl_indices, icl_score
from inductionlab.metrics.induction import induction_accuracy, induction_loss
from inductionlab.models import build_model


def _model(preset="induction-2l", seed=0):
    cfg = load_config(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model).eval()
    b = RepeatedTokens(256, 80, 20, 29, True, "sequence", seed=1).sample(6)
    return model, b


def test_batched_equals_single_head_runs():
    model, b = _model()
    ab = head_ablation(model, b.tokens, b.induction_mask)
    assert ab["heads"] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    for kind in KINDS:
        for i, (layer, h) in enumerate([(l, h) for l in range(2) for h in range(4)]):
            s = ablate_heads(model, b.tokens, b.induction_mask, [(layer, h)], kind)
            for metric, deltas in ab[kind].items():
                assert abs(deltas[i] - (s[metric] - ab["clean"][metric])) < 1e-4, (kind, metric, i)


def test_dead_head_has_no_effect_and_single_layer_pattern_preserving_is_zero_ablation():
    model, b = _model("induction-1l")
    with torch.no_grad():
        model.blocks[0].attn.W_O[1].zero_()  # head 1 writes nothing
    ab = head_ablation(model, b.tokens, b.induction_mask)
    for kind in ("zero", "pattern_preserving"):
        assert all(abs(ab[kind][m][1]) < 1e-5 for m in ab[kind])
    for m in ab["zero"]:  # one layer: freezing its own pattern changes nothing
        assert torch.allclose(torch.tensor(ab["zero"][m]), torch.tensor(ab["pattern_preserving"][m]), atol=1e-5)


def test_mean_ablation_of_constant_head_is_a_no_op():
    model, b = _model("induction-1l")
    with torch.no_grad():  # head 0: values are a constant bias -> z is the same everywhere
        model.blocks[0].attn.W_V[0].zero_()
        model.blocks[0].attn.b_V[0].fill_(0.3)
    ab = head_ablation(model, b.tokens, b.induction_mask, kinds=("mean",))
    assert all(abs(ab["mean"][m][0]) < 1e-4 for m in ab["mean"])


# --------------------------------------------------------------------------- the study: pieces


def test_bootstrap_interval_is_seeded_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(400, generator=g, dtype=torch.double) * 2 + 1
    state = torch.random.get_rng_state()
    a, b = bootstrap_interval(x, seed=0), bootstrap_interval(x, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == b and bootstrap_interval(x, seed=1) != a
    assert a.low < a.mean < a.high and abs(a.mean - float(x.mean())) < 1e-12
    half = 1.96 * float(x.std()) / 400 ** 0.5  # the normal-theory half-width
    assert abs((a.high - a.low) / 2 - half) < 0.1 * half
    wide = bootstrap_interval(x, confidence=0.99)
    assert wide.low < a.low and wide.high > a.high
    c = bootstrap_interval(torch.full((50,), 0.25))
    assert (c.mean, c.low, c.high) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError):
        bootstrap_interval(torch.zeros(0))


def test_current_token_score_on_hand_built_patterns():
    t = 10
    self_attn = torch.eye(t)[None, None]  # [1, 1, q, k]
    prev = torch.zeros(1, 1, t, t)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, t), torch.arange(0, t - 1)] = 1
    both = torch.cat([self_attn, prev], 1)  # two heads
    assert current_token_score(both).tolist() == [1.0, 0.0]


def test_classify_heads_thresholds_and_groups():
    p, c, i = PREVIOUS_TOKEN_THRESHOLD, CURRENT_TOKEN_THRESHOLD, INDUCTION_THRESHOLD
    prev = {0: [p, p - 0.01, 0.05, 0.9], 1: [0.0, 0.0, 0.0, 0.0]}
    cur = {0: [0.9, c, c - 0.01, 0.9], 1: [0.0, 0.0, 0.0, 0.0]}
    pm = {0: [0.0] * 4, 1: [i, i - 0.01, 0.95, 0.1]}
    roles = classify_heads(prev, pm, cur)
    assert roles == {(0, 0): "previous_token", (0, 1): "current_token", (0, 2): "other", (0, 3): "previous_token",
                     (1, 0): "induction", (1, 1): "other", (1, 2): "induction", (1, 3): "other"}
    assert role_groups(roles) == {"L0 previous_token": [(0, 0), (0, 3)], "L0 current_token": [(0, 1)],
                                  "L0 other": [(0, 2)], "L1 induction": [(1, 0), (1, 2)],
                                  "L1 other": [(1, 1), (1, 3)]}
    # without current-token scores the first layer has previous-token heads and others only
    assert classify_heads(prev, pm)[(0, 1)] == "other"


def test_classify_heads_by_score_in_every_attention_layer():
    """Roles come from the scores, not the layer: induction heads are found in the only attention
    layer of a one-attention-layer model (conv-attn: layer 1; smeared-1l: layer 0), and every
    layer is scored for previous- and current-token heads too; the first attention layer of a
    model with several has no induction heads (unless ``first_layer_induction``)."""
    i, p = INDUCTION_THRESHOLD, PREVIOUS_TOKEN_THRESHOLD
    for layer in (1, 0):  # conv-attn, smeared-1l
        prev, pm, cur = {layer: [0.05, 0.9, 0.1, 0.6]}, {layer: [i, 0.0, 0.1, 0.9]}, {layer: [0.1, 0.0, 0.9, 0.0]}
        assert classify_heads(prev, pm, cur) == {(layer, 0): "induction", (layer, 1): "previous_token",
                                                 (layer, 2): "current_token", (layer, 3): "induction"}
        assert classify_heads(prev, pm, cur, first_layer_induction=False)[(layer, 0)] == "other"
    prev = {0: [0.9, 0.0], 1: [p, 0.0], 2: [0.0, 0.0]}
    pm = {0: [0.95, 0.95], 1: [0.0, 0.95], 2: [0.95, 0.0]}
    roles = classify_heads(prev, pm)
    assert roles == {(0, 0): "previous_token", (0, 1): "other", (1, 0): "previous_token",
                     (1, 1): "induction", (2, 0): "induction", (2, 1): "other"}
    assert classify_heads(prev, pm, first_layer_induction=True)[(0, 1)] == "induction"
    assert role_groups(roles)["L1 previous_token"] == [(1, 0)]


def _hand_patterns(tokens, periods, bos, layers, kinds):
    """``{layer: [batch, head, q, k]}``: per head ``kinds[h]`` "induction" (all attention on the
    successors of earlier occurrences, BOS where there are none) or "previous" (the previous
    position)."""
    b, t = tokens.shape
    targets, _ = prefix_matching_targets(periods, t, bos)
    ind = targets.float()
    ind[:, :, 0] += (ind.sum(-1) == 0).float()
    ind = ind / ind.sum(-1, keepdim=True)
    prev = torch.zeros(b, t, t)
    prev[:, 0, 0] = 1
    prev[:, torch.arange(1, t), torch.arange(0, t - 1)] = 1
    heads = torch.stack([ind if k == "induction" else prev for k in kinds], 1)
    return {layer: heads for layer in layers}


@pytest.mark.parametrize("preset", ["induction-conv-attn", "induction-smeared-1l"])
def test_single_attention_layer_models_get_induction_heads(preset, monkeypatch):
    cfg = load_config(preset)
    model = build_model(cfg.model).eval()
    (layer,) = [la for la, _ in model.attention_layers]  # conv-attn: 1, smeared-1l: 0
    b = RepeatedTokens(256, cfg.model.n_ctx, 20, 29, True, "sequence", seed=1).sample(8)
    kinds = ["induction", "previous", "induction", "previous"]
    monkeypatch.setattr(model, "patterns", lambda tk: _hand_patterns(tk, b.periods[:tk.shape[0]], True, [layer], kinds))
    s = head_scores(model, b.tokens, b.periods, True, batch=8)
    assert s["prefix_matching"][layer].tolist() == pytest.approx([1, 0, 1, 0], abs=1e-6)
    roles = classify_heads(s["previous_token"], s["prefix_matching"], s["current_token"])
    assert [roles[(layer, h)] for h in range(4)] == ["induction", "previous_token", "induction", "previous_token"]
    assert role_groups(roles)[f"L{layer} induction"] == [(layer, 0), (layer, 2)]


def test_head_scores_in_chunks_equal_one_batch_with_varying_periods():
    """The prefix-matching score averages later-repeat queries, whose number per sequence depends
    on the period (80 tokens: 77 queries at period 2, 40 at period 39): chunk totals and counts
    are summed, not per-chunk means weighted by sequences."""
    model, _ = _model()
    b = RepeatedTokens(256, 80, 2, 39, True, "sequence", seed=3).sample(10)
    assert len(set(b.periods.tolist())) > 5
    whole = head_scores(model, b.tokens, b.periods, True, batch=64)
    for layer, p in model.patterns(b.tokens).items():  # one batch: the plain scores
        assert torch.allclose(whole["prefix_matching"][layer], prefix_matching_score(p, b.periods), atol=1e-7)
    for batch in (1, 3, 4):
        chunked = head_scores(model, b.tokens, b.periods, True, batch=batch)
        for k in whole:
            for layer in whole[k]:
                assert (chunked[k][layer] - whole[k][layer]).abs().max() < 1e-6, (batch, k, layer)
    # what per-chunk means weighted by sequence count would have given: measurably different
    old = sum(prefix_matching_score(model.patterns(b.tokens[s:s + 3])[1], b.periods[s:s + 3]) * len(b.tokens[s:s + 3]) / 10
              for s in range(0, 10, 3))
    assert (old - whole["prefix_matching"][1]).abs().max() > 1e-4


def test_scores_and_per_sequence_scores_share_their_definitions():
    model, b = _model()
    with torch.no_grad():
        logits = model(b.tokens)
    s = scores(logits, b.tokens, b.induction_mask, icl_indices(b.tokens.shape[1]))
    assert s["induction_loss"] == pytest.approx(float(induction_loss(logits, b.tokens, b.induction_mask)), abs=1e-6)
    assert s["induction_accuracy"] == pytest.approx(float(induction_accuracy(logits, b.tokens, b.induction_mask)), abs=1e-6)
    assert s["icl_score"] == pytest.approx(icl_score(logits, b.tokens)[0], abs=1e-6)
    per = per_sequence_scores(logits, b.tokens, b.induction_mask)
    for i in range(b.tokens.shape[0]):
        one = scores(logits[i:i + 1], b.tokens[i:i + 1], b.induction_mask[i:i + 1], (1, 2))
        for k in per:
            assert float(per[k][i]) == pytest.approx(one[k], abs=1e-6)


def test_ablation_study_without_induction_predictions_is_a_one_line_user_error():
    """Period 1 in a 3-token context with BOS (BOS, r, r): no prediction is made from a repeated
    token, so the mask is empty."""
    model, _ = _model("induction-1l")
    b = RepeatedTokens(256, 3, 1, 1, True, "sequence", seed=0).sample(4)
    assert int(b.induction_mask.sum()) == 0
    with pytest.raises(AblationError, match="4 of 4 sequences have no induction prediction") as info:
        ablation_study(model, b.tokens, b.induction_mask, heads=[], resamples=10)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_study_chunks_and_per_sequence_deltas_match_single_runs():
    model, _ = _model()
    with torch.no_grad():  # louder heads: ablations move the loss by ~1e-2, not ~1e-3
        for _, attn in model.attention_layers:
            attn.W_O.mul_(30)
    b = RepeatedTokens(256, 80, 20, 29, True, "sequence", seed=2).sample(6)
    groups = {"pair": [(0, 1), (1, 2)]}
    whole = ablation_study(model, b.tokens, b.induction_mask, groups, batch=6)
    chunked = ablation_study(model, b.tokens, b.induction_mask, groups, batch=4)
    assert whole["heads"] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert whole["groups"] == {"pair": ["L0H1", "L1H2"]}
    for kind in KINDS:  # mean ablation uses the mean over all sequences, so chunking changes nothing
        for unit, metrics in whole[kind].items():
            for metric, iv in metrics.items():
                assert abs(iv["mean"] - chunked[kind][unit][metric]["mean"]) < 2e-5, (kind, unit, metric)
    for kind in ("zero", "pattern_preserving"):  # per-sequence deltas, averaged over sequences
        for unit, heads in (("L0H2", [(0, 2)]), ("pair", groups["pair"])):
            for metric in ("induction_loss", "induction_accuracy"):
                per = []
                for i in range(6):
                    tk, mk = b.tokens[i:i + 1], b.induction_mask[i:i + 1]
                    per.append(ablate_heads(model, tk, mk, heads, kind)[metric]
                               - ablate_heads(model, tk, mk, [], kind)[metric])
                assert abs(sum(per) / 6 - whole[kind][unit][metric]["mean"]) < 2e-5, (kind, unit, metric)
    with pytest.raises(ValueError, match="no such head"):
        ablation_study(model, b.tokens, b.induction_mask, {"bad": [(1, 9)]})


# --------------------------------------------------------------------------- the study on trained models
def _held_out(cfg, n: int):
    """``n`` held-out sequences from the run's evaluation generator: tokens, periods, mask."""
    m, d = cfg.model, cfg.data
    gen = RepeatedTokens(m.vocab_size, m.n_ctx, d.period_min, d.period_max, d.bos, "sequence",
                         seed=cfg.train.seed + EVAL_SEED_OFFSET)
    batches = gen.fixed_set(n)
    return (torch.cat([b.tokens for b in batches]), torch.cat([b.periods for b in batches]),
            torch.cat([b.induction_mask for b in batches]))


def _roles(model, cfg, tokens, periods):
    s = head_scores(model, tokens, periods, cfg.data.bos)
    return s, classify_heads(s["previous_token"], s["prefix_matching"], s["current_token"])


def _acc(study, kind, unit):
    return study[kind][unit]["induction_accuracy"]


def _near_zero(iv, margin):
    return -margin < iv["low"] and iv["high"] < margin


@pytest.fixture(scope="module")
def study_2l(trained_2l):
    """Groups only (no single heads), all kinds, 256 held-out sequences of the ``trained_2l`` run."""
    cfg, model, _, _ = trained_2l
    tokens, periods, mask = _held_out(cfg, 256)
    _, roles = _roles(model, cfg, tokens, periods)
    groups = role_groups(roles)
    return roles, groups, ablation_study(model, tokens, mask, groups, heads=[], batch=32)


def test_previous_token_heads_carry_induction_through_layer_1_patterns(study_2l):
    """Zero/mean-ablating the layer-0 previous-token heads of induction-2l destroys induction:
    the whole interval lies below minus half the clean accuracy. Pattern-preserving ablation of
    the same heads (layer-1 patterns frozen) changes nothing: their role is to shape where the
    layer-1 heads attend (K-composition)."""
    _, groups, st = study_2l
    assert groups.get("L0 previous_token"), groups
    clean = st["clean"]["induction_accuracy"]["mean"]
    assert clean > 0.9
    for kind in ("zero", "mean"):
        assert _acc(st, kind, "L0 previous_token")["high"] < -0.5 * clean, kind
        assert _acc(st, kind, "L1 induction")["high"] < -0.5 * clean, kind
    assert _near_zero(_acc(st, "pattern_preserving", "L0 previous_token"), 0.02)


@pytest.fixture(scope="module")
def trained_8h(tmp_path_factory):
    """``induction-2l-8h`` (8 heads per layer) made cheap: n_ctx 64, 400 steps, one full evaluation
    (about 15-25 s on one or two CPU cores). Returns ``(cfg, model, scores, roles, study)``: the study
    covers the layer-1 heads one at a time and every role group, zero and mean, 128 sequences."""
    from inductionlab.evaluation import load_run
    from inductionlab.train import train

    out = tmp_path_factory.mktemp("induction-2l-8h") / "run"
    cfg = load_config("induction-2l-8h", ["model.n_ctx=64", "train.steps=400", "train.eval_every=400",
                                          "train.log_evals=0", 'train.full_metrics="final"',
                                          "data.eval_sequences=16", "train.seed=0"])
    train(cfg, out, progress=False)
    cfg, model = load_run(out)
    tokens, periods, mask = _held_out(cfg, 128)
    scores, roles = _roles(model, cfg, tokens, periods)
    layer1 = [(1, h) for h in range(cfg.model.n_heads)]
    study = ablation_study(model, tokens, mask, role_groups(roles), kinds=("zero", "mean"), heads=layer1, batch=16)
    return cfg, model, scores, roles, study


def test_layer0_previous_token_heads_matter_and_unspecialised_heads_do_not(trained_8h):
    """Both directions in layer 0: the previous-token heads together destroy induction; the heads
    that are neither previous-token nor current-token heads, together, change accuracy by less
    than 0.05 (whole interval)."""
    _, _, _, roles, st = trained_8h
    assert "L0 previous_token" in st["groups"] and "L0 other" in st["groups"], roles
    clean = st["clean"]["induction_accuracy"]["mean"]
    assert clean > 0.9
    for kind in ("zero", "mean"):
        prev, other = _acc(st, kind, "L0 previous_token"), _acc(st, kind, "L0 other")
        assert prev["high"] < -0.5 * clean, (kind, prev)
        assert _near_zero(other, 0.05), (kind, other)


def test_layer1_induction_head_costs_more_than_a_non_induction_head(trained_8h):
    """Not every layer-1 head is an induction head here. Ablating the one with the highest
    prefix-matching score costs more accuracy than ablating any layer-1 non-induction head
    (intervals separated); the non-induction heads together cost ~nothing, the induction heads
    together destroy induction."""
    cfg, _, scores, roles, st = trained_8h
    pm = scores["prefix_matching"][1].tolist()
    others = [h for h in range(cfg.model.n_heads) if roles[(1, h)] == "other"]
    assert others and max(pm) >= INDUCTION_THRESHOLD, pm
    top = max(range(len(pm)), key=lambda h: pm[h])
    clean = st["clean"]["induction_accuracy"]["mean"]
    for kind in ("zero", "mean"):
        best = _acc(st, kind, f"L1H{top}")
        assert all(best["high"] < _acc(st, kind, f"L1H{h}")["low"] for h in others), (kind, best)
        assert _near_zero(_acc(st, kind, "L1 other"), 0.03), kind
        assert _acc(st, kind, "L1 induction")["high"] < -0.5 * clean, kind


def test_cli_eval_ablation_prints_intervals(trained_2l, capsys):
    _, _, run_dir, _ = trained_2l
    assert main(["eval", str(run_dir), "--ablation", "--sequences", "16"]) == 0
    text = capsys.readouterr().out
    assert "16 sequences" in text and "95% percentile-bootstrap interval" in text
    assert "L0 previous_token (" in text and "delta induction_loss" in text
    assert main(["eval", str(run_dir), "--ablation", "--sequences", "16", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["sequences"] == 16 and j["step"] == 600 and set(KINDS) <= set(j)
    iv = j["zero"]["L0H0"]["induction_accuracy"]
    assert iv["low"] <= iv["mean"] <= iv["high"]
    assert main(["eval", str(run_dir), "--ablation", "--sequences", "1"]) == 2

"""OOD evaluation: period/length sweeps and the confusing-repeat construction."""

import torch

from inductionlab.configfile import load_config
from inductionlab.data.synthetic import RepeatedTokens
from inductionlab.metrics.induction import induction_accuracy
from inductionlab.metrics.ood import (
    OOD_SEED,
    accuracy_by_length,
    accuracy_by_period,
    confusing_repeat_batch,
    confusing_repeat_reference,
    one_token_induction_accuracy,
)
from inductionlab.models import build_model


def _model(overrides=()):
    cfg = load_config("induction-1l", list(overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(cfg.model).eval()


def test_period_sweep_batched_matches_per_period_and_skips_long_periods():
    model = _model()
    got = accuracy_by_period(model, [5, 20, 39, 40, 60], 256, 80, n=8)
    assert sorted(got) == [5, 20, 39]  # 2P must fit in the 79 content tokens
    for p, acc in got.items():
        b = RepeatedTokens(256, 80, p, p, True, "batch", seed=OOD_SEED + p).sample(8)
        assert abs(acc - float(induction_accuracy(model(b.tokens), b.tokens, b.induction_mask))) < 1e-6


def test_length_sweep_extrapolates_only_without_learned_positions():
    rot, reason = accuracy_by_length(_model(), [80, 160], 256, 20, 29, n=4)
    assert sorted(rot) == [80, 160] and reason is None
    learned, reason = accuracy_by_length(_model(["model.positions=learned"]), [80, 160], 256, 20, 29, n=4)
    assert sorted(learned) == [80] and "learned" in reason and "n_ctx=80" in reason


def test_confusing_repeat_structure():
    tokens, amb = confusing_repeat_batch(256, 80, 24, 50, seed=3)
    assert tokens.shape == (50, 80) and amb.shape == (50, 79)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    r = tokens[:, 1:25]
    assert torch.equal(tokens[:, 25:49], r)  # the block repeats with period 24
    for n in range(50):
        idx = amb[n].nonzero().flatten()
        assert len(idx) >= 4 and (idx - 1 >= 24).all()
        phases = sorted({int(i - 1) % 24 for i in idx})
        assert len(phases) == 2
        i, j = phases
        assert r[n, i] == r[n, j] and r[n, i + 1] != r[n, j + 1]  # same token, different successors


def test_one_token_induction_reference_on_a_hand_built_sequence():
    # [BOS] a b a c | a b a c | a b a c  (period 4: 'a' at phases 0 and 2, successors b and c)
    a, b, c = 1, 2, 3
    tokens = torch.tensor([[0] + [a, b, a, c] * 3])
    every = torch.ones(1, 12, dtype=torch.bool)
    amb = torch.zeros(1, 12, dtype=torch.bool)
    amb[0, [5, 7, 9, 11]] = True  # predictions made at 'a' from the second copy on
    # position 5 ('a', phase 0 of copy 2): earlier a's at 1, 3 -> successors b, c: a tie -> 1/2
    # position 7 ('a', phase 2): earlier a's at 1, 3, 5 -> b, c, b -> predicts b, target c -> 0
    # position 9: a's at 1, 3, 5, 7 -> b, c, b, c: tie -> 1/2; position 11: b wins again -> 0
    assert one_token_induction_accuracy(tokens, amb, 4, "uniform") == 0.25
    # most recent earlier 'a' is always the other phase's -> always wrong
    assert one_token_induction_accuracy(tokens, amb, 4, "recent") == 0.0
    # on the unambiguous tokens b and c it is perfect from the second copy on
    clean = torch.zeros(1, 12, dtype=torch.bool)
    clean[0, [6, 8, 10]] = True
    assert one_token_induction_accuracy(tokens, clean, 4, "recent") == 1.0
    assert one_token_induction_accuracy(tokens, clean, 4, "uniform") == 1.0
    assert one_token_induction_accuracy(tokens, every, 4, "uniform") < 1.0


def test_confusing_repeat_reference_is_well_below_one_half():
    ref = confusing_repeat_reference(256, 80, 24, n=64)
    assert 0.15 <= ref["one_token_uniform"] <= 0.35
    assert ref["one_token_recent"] <= 0.05

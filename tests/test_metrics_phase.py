"""Phase-change detection on synthetic curves with a known change point."""

import math

import numpy as np

from inductionlab.metrics.phase import change_point, phase_from_log


def _steps():
    early = sorted({max(1, round(50 ** (i / 10))) for i in range(10)})
    return early + list(range(50, 2001, 50))


def _sig(s, centre, width=0.08):
    return 1 / (1 + math.exp(-(math.log10(s) - math.log10(centre)) / width))


def test_rising_sigmoid_change_point_and_window():
    steps = _steps()
    vals = [0.05 + 0.9 * _sig(s, 400) for s in steps]
    cp = change_point(steps, vals)
    assert abs(cp["step"] - 400) <= 50 and cp["direction"] == 1
    lo, hi = cp["window"]
    # 10%-90% of a logistic in log-step: centre * 10**(+-width * ln 9), snapped to logged steps
    # 50 apart and slightly widened by the smoothing
    assert abs(lo - 400 * 10 ** (-0.08 * math.log(9))) <= 60
    assert abs(hi - 400 * 10 ** (0.08 * math.log(9))) <= 60
    assert not cp["bump"] and cp["bump_size"] == 0.0


def test_falling_loss_with_and_without_bump():
    steps = _steps()
    base = [5.5 - 5.0 * _sig(s, 700) for s in steps]
    cp = change_point(steps, base)
    assert abs(cp["step"] - 700) <= 50 and cp["direction"] == -1 and not cp["bump"]
    bumped = [v + (0.8 if 600 <= s <= 650 else 0.0) for v, s in zip(base, steps)]
    cb = change_point(steps, bumped)
    assert cb["bump"] and cb["bump_size"] > 0.05  # the rise above the running minimum
    assert abs(cb["step"] - 700) <= 100


def test_early_change_in_log_spaced_part():
    steps = _steps()
    cp = change_point(steps, [_sig(s, 10, 0.1) for s in steps])
    assert 7 <= cp["step"] <= 15


def test_degenerate_curves():
    assert change_point([1, 2], [0, 1]) is None
    assert change_point([1, 2, 3], [1, 1, 1]) is None
    assert change_point([1, 2, 3, float("nan")], [0, 1, 2, 3])["step"] in (1, 2, 3)


def test_phase_from_log_agreement():
    steps = _steps()
    recs = [{"step": s, "induction_loss": 5 - 4.9 * _sig(s, 300),
             "prefix_matching": {"0": [0.01, 0.02], "1": [0.03, 0.9 * _sig(s, 300)]},
             "previous_token": {"0": [0.1, 0.8 * _sig(s, 250)], "1": [0.0, 0.0]}} for s in steps]
    recs[-1]["icl_score"] = -3.0  # a single full record: too few points for a curve
    ph = phase_from_log(recs)
    assert ph["prefix_matching"]["step"] == ph["induction_loss"]["step"]
    assert abs(ph["prefix_matching"]["step"] - 300) <= 50
    assert ph["agreement"] == 0 and ph["eval_interval"] == 50
    assert "icl_score" not in ph
    assert np.isfinite(ph["previous_token"]["step"])

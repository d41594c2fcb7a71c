"""The full suite: keys/JSON on every architecture, and the acceptance criteria on the trained
induction-2l model (``trained_2l`` fixture). Figures measured are recorded in docs/metrics.md."""

import json

import pytest
import torch

from inductionlab.configfile import load_config
from inductionlab.metrics.ablation import ablate_heads, head_ablation
from inductionlab.metrics.evaluate import evaluate_repeat
from inductionlab.metrics.suite import SUITE_SEQUENCES, _eval_slice, analyze_repeat
from inductionlab.models import build_model
from inductionlab.tasks import make_task


@pytest.fixture(scope="module")
def analysed(trained_2l):
    cfg, model, _, _ = trained_2l
    task = make_task(cfg, torch.device("cpu"))
    ev = evaluate_repeat(model, task.eval_batches)
    res = analyze_repeat(model, cfg, task.eval_batches)
    return cfg, model, task, ev, res


def _pair(ev):
    prev = ev["previous_token"]["0"]
    ind = ev["prefix_matching"]["1"]
    p, i = max(range(len(prev)), key=prev.__getitem__), max(range(len(ind)), key=ind.__getitem__)
    return f"L0H{p}", f"L1H{i}", p, i


def test_keys_shapes_and_json(analysed):
    _, _, _, _, res = analysed
    json.loads(json.dumps(res))
    for key in ("copying", "ov_positivity", "icl_score", "icl_indices", "composition", "ablation",
                "ood_period", "ood_length", "confusing_repeat"):
        assert key in res, key
    assert "conv_kernel" not in res and "smear_sigma" not in res
    assert set(res["copying"]) == {"0", "1"} and len(res["copying"]["1"]) == 4
    assert res["icl_indices"] == [15, 78]
    comp = res["composition"]
    assert len(comp["heads"]) == 8 and all(len(row) == 8 for row in comp["k"])
    for kind in ("zero", "mean", "pattern_preserving"):
        assert set(res["ablation"][kind]) == {"induction_loss", "induction_accuracy", "icl_score"}
        assert len(res["ablation"][kind]["induction_accuracy"]) == 8
    assert set(res["ood_period"]) == {"5", "10", "15", "20", "25", "30", "35"}
    assert set(res["ood_length"]) == {"80", "160"}  # rotary positions run past n_ctx


def test_behaviour_of_trained_model(analysed):
    _, _, _, _, res = analysed
    assert res["icl_score"] < -1.0  # later tokens are far easier than early ones
    assert res["ood_period"]["25"] > 0.9
    assert min(res["ov_positivity"]["1"]) > 0.8 and max(res["copying"]["1"]) > 0
    assert res["confusing_repeat"] > 0.5


def test_k_composition_prev_token_to_induction_head(analysed):
    """The induction head reads a previous-token head through its keys: the strongest
    K-composition of all pairs ends at an induction head and starts at a previous-token head,
    and the best previous-token head composes with the best induction head through keys only."""
    _, _, _, ev, res = analysed
    comp = res["composition"]
    heads = comp["heads"]
    prev_heads = {f"L0H{h}" for h, v in enumerate(ev["previous_token"]["0"]) if v >= 0.4}
    induction_heads = {f"L1H{h}" for h, v in enumerate(ev["prefix_matching"]["1"]) if v >= 0.5}
    pairs = [(v, heads[s], heads[d]) for s, row in enumerate(comp["k"]) for d, v in enumerate(row) if v is not None]
    best, src, dst = max(pairs)
    assert src in prev_heads and dst in induction_heads, f"best K pair {src}->{dst} = {best}"
    assert best > 1.8 * comp["baseline"]["k"]
    src_name, dst_name, _, _ = _pair(ev)
    s, d = heads.index(src_name), heads.index(dst_name)
    assert comp["k"][s][d] > 1.6 * comp["baseline"]["k"]
    # the pair composes through keys only: Q and V stay at (in fact below) the random level
    assert comp["q"][s][d] < 1.25 * comp["baseline"]["q"]
    assert comp["v"][s][d] < 1.25 * comp["baseline"]["v"]


def test_induction_head_ov_positivity(analysed):
    _, _, _, ev, res = analysed
    _, _, _, i = _pair(ev)
    assert res["ov_positivity"]["1"][i] >= 0.8


def test_pattern_preserving_ablation_of_the_induction_heads(analysed):
    """The criterion on the *set* of induction heads: ablating them together (patterns preserved)
    destroys induction; ablating any single other head barely matters."""
    _, model, task, ev, _ = analysed
    tokens, mask = _eval_slice(task.eval_batches, SUITE_SEQUENCES)
    induction = [(1, h) for h, s in enumerate(ev["prefix_matching"]["1"]) if s >= 0.5]
    assert induction
    clean = ablate_heads(model, tokens, mask, [], "pattern_preserving")["induction_accuracy"]
    joint = ablate_heads(model, tokens, mask, induction, "pattern_preserving")["induction_accuracy"]
    assert joint < 0.2 * clean
    ab = head_ablation(model, tokens, mask, kinds=("pattern_preserving",))
    others = [i for i, name in enumerate(ab["heads"]) if (int(name[1]), int(name[3])) not in induction]
    assert all(ab["pattern_preserving"]["induction_accuracy"][i] > -0.05 for i in others)


@pytest.mark.parametrize("preset,extra", [("induction-conv-attn", "conv_kernel"),
                                          ("induction-smeared-1l", "smear_sigma"),
                                          ("induction-2l-fixed", "ood_length_skipped")])
def test_other_architectures(preset, extra):
    cfg = load_config(preset, ["data.eval_sequences=16"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.model)
    task = make_task(cfg, torch.device("cpu"))
    res = analyze_repeat(model, cfg, task.eval_batches)
    json.dumps(res)
    assert extra in res
    if preset == "induction-conv-attn":
        assert len(res["conv_kernel"]["0"]) == cfg.model.conv_kernel
        assert all(v is None for row in res["composition"]["k"] for v in row)  # one attention layer
    if preset == "induction-smeared-1l":
        assert res["smear_sigma"]["0"] == [0.5] * 4
    if preset == "induction-2l-fixed":
        assert set(res["ood_length"]) == {"80"}
    assert model.training  # the suite restores the mode it found

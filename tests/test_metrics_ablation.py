"""Head ablations: batched results equal one pass per head; known answers on simple models."""

import torch

from inductionlab.config import load_config
from inductionlab.data.synthetic import RepeatedTokens
from inductionlab.metrics.ablation import KINDS, ablate_heads, head_ablation
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

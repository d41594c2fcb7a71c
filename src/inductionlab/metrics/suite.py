"""The full measurement suite run at log-spaced evaluations (see docs/metrics.md).

``analyze_repeat`` returns a JSON-serialisable dict; per-layer dicts are keyed by the layer index
as a string and hold lists indexed by head. Sample sizes are small so one call stays fast
(tens of milliseconds of compute for the induction-2l model): ``SUITE_SEQUENCES`` held-out
sequences for the ICL score, ``ABLATION_SEQUENCES`` of them for
the ablations, ``OOD_SEQUENCES`` per OOD setting, ``COPY_TOKENS`` tokens
for the copying score.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..models.mode import eval_mode
from .ablation import head_ablation
from .composition import ROTARY_DELTAS, composition_scores, composition_scores_rotary
from .copying import copying_chance, copying_ratios, ov_positivity, ratio_to_score
from .icl import icl_indices, icl_score_from_curve
from .induction import loss_by_position
from .kernels import conv_kernel_profiles, smear_sigmas
from .ood import accuracy_by_length, accuracy_by_period, confusing_repeat_accuracy, confusing_repeat_reference

SUITE_SEQUENCES = 64
ABLATION_SEQUENCES = 16
OOD_SEQUENCES = 32
COPY_TOKENS = 200
OOD_PERIODS = (5, 10, 15, 20, 25, 30, 35, 40, 50, 60)
ROUND = 4


def _r(x: float) -> float:
    return round(float(x), ROUND)


def _per_layer(d: dict[int, torch.Tensor]) -> dict[str, list[float]]:
    return {str(layer): [_r(v) for v in t.tolist()] for layer, t in d.items()}


def _eval_slice(eval_batches, n: int):
    toks, masks = [], []
    left = n
    for b in eval_batches:
        if left <= 0:
            break
        toks.append(b.tokens[:left])
        masks.append(b.induction_mask[:left])
        left -= toks[-1].shape[0]
    return torch.cat(toks), torch.cat(masks)


@torch.no_grad()
def weight_metrics(model, bos: bool = True, deltas: Sequence[int] = ROTARY_DELTAS) -> dict[str, Any]:
    """The measurements that need weights only (no data): copying, OV positivity, Q/K/V
    composition (LayerNorm folded; rotary-aware Q/K composition at the relative offsets
    ``deltas`` for rotary models), conv-kernel profiles and smeared-key sigma(alpha). Text runs
    log these too."""
    out: dict[str, Any] = {}
    if model.attention_layers:
        ratios = copying_ratios(model, COPY_TOKENS, bos=bos)
        chance = copying_chance(model.W_U.shape[-1])
        out["copying"] = _per_layer({layer: ratio_to_score(r, chance) for layer, r in ratios.items()})
        out["copying_ratio"] = {str(layer): [round(float(v), 6) for v in r.tolist()] for layer, r in ratios.items()}
        out["copying_chance"] = chance
        out["ov_positivity"] = _per_layer(ov_positivity(model))
        comp = composition_scores(model)
        out["composition"] = {
            "heads": comp["heads"],
            **{k: [[None if v is None else _r(v) for v in row] for row in comp[k]] for k in "qkv"},
            "baseline": {k: _r(v) for k, v in comp["baseline"].items()},
        }
        if model.cfg.positions == "rotary":
            rot = composition_scores_rotary(model, deltas)
            out["composition_rotary"] = {
                "heads": rot["heads"], "deltas": rot["deltas"],
                **{k: {d: [[None if v is None else _r(v) for v in row] for row in sq] for d, sq in rot[k].items()}
                   for k in "qk"},
                "baseline": {k: {d: _r(v) for d, v in rot["baseline"][k].items()} for k in "qk"},
            }
    conv = conv_kernel_profiles(model)
    if conv:
        out["conv_kernel"] = _per_layer(conv)
    smear = smear_sigmas(model)
    if smear:
        out["smear_sigma"] = _per_layer(smear)
    return out


@torch.no_grad()
def analyze_repeat(model, cfg, eval_batches) -> dict[str, Any]:
    """Copying, OV positivity, ICL score, composition, ablations, conv kernels, smear weights and
    OOD accuracies (keys documented in docs/metrics.md)."""
    with eval_mode(model):
        return _analyze(model, cfg, eval_batches)


def _analyze(model, cfg, eval_batches) -> dict[str, Any]:
    m, d = cfg.model, cfg.data
    bos = d.bos
    tokens, mask = _eval_slice(eval_batches, SUITE_SEQUENCES)
    early, late = icl_indices(tokens.shape[1])
    # rotary Q/K composition at small offsets and at P - 1, where an induction head's key sits
    # (the token after the previous occurrence), for the training periods' range and middle
    mid = (d.period_min + d.period_max) // 2
    deltas = sorted({*ROTARY_DELTAS, d.period_min - 1, mid - 1, d.period_max - 1})
    out: dict[str, Any] = weight_metrics(model, bos, deltas)
    has_attn = bool(model.attention_layers)
    clean_icl = icl_score_from_curve(loss_by_position(model(tokens), tokens), early, late)
    if has_attn:
        k = ABLATION_SEQUENCES
        ab = head_ablation(model, tokens[:k], mask[:k], icl=(early, late))
    out["icl_score"] = _r(clean_icl)
    out["icl_indices"] = [early, late]
    if has_attn:
        out["ablation"] = {"heads": ab["heads"],
                           **{kind: {k: [_r(v) for v in vals] for k, vals in ab[kind].items()}
                              for kind in ("zero", "mean", "pattern_preserving")}}
    per = accuracy_by_period(model, list(OOD_PERIODS), m.vocab_size, m.n_ctx, bos, n=OOD_SEQUENCES)
    out["ood_period"] = {str(p): _r(a) for p, a in per.items()}
    lengths, reason = accuracy_by_length(model, [m.n_ctx, 2 * m.n_ctx], m.vocab_size, d.period_min,
                                         d.period_max, bos, n=OOD_SEQUENCES // 2)
    out["ood_length"] = {str(t): _r(a) for t, a in lengths.items()}
    if reason:
        out["ood_length_skipped"] = reason
    period = (d.period_min + d.period_max) // 2
    off = 1 if bos else 0
    if period >= 3 and 2 * period <= m.n_ctx - off:
        out["confusing_repeat"] = _r(confusing_repeat_accuracy(model, m.vocab_size, m.n_ctx, period, bos,
                                                               n=OOD_SEQUENCES))
        ref = confusing_repeat_reference(m.vocab_size, m.n_ctx, period, bos, n=OOD_SEQUENCES)
        out["confusing_repeat_reference"] = {k: _r(v) for k, v in ref.items()}
    return out

"""Cross-validation against TransformerLens 3.9 on trained runs (``pip install -e '.[tl]'``).

Two trained runs: ``trained_2l`` (conftest: induction-2l, rotary + LayerNorm, 600 steps) and
``learned_run`` (learned positions, no LayerNorm, 400 steps). Each is exported with
``export_transformer_lens`` and reloaded from the two files a user gets; then:

* logits (and attention patterns) of the ``HookedTransformer`` equal ours;
* previous-token / prefix-matching scores equal ``transformer_lens.head_detector.detect_head``
  after the conversion documented in docs/metrics.md (see ``test_head_scores_equal_detect_head``);
* every tensor of ``fold_layer_norm`` equals TransformerLens's ``fold_ln`` + ``center_writing_weights``;
* composition scores equal ``all_composition_scores`` of the model loaded with ``fold_ln=True``;
* OV positivity equals ``FactoredMatrix.eigenvalues`` of ``W_E @ OV @ W_U`` after ``fold_ln``;
* the copying ratio equals the same computation on TransformerLens's folded weights.

Sensitivity checks show a wrong mapping would fail: GPT-J rotary layout, tanh GELU, shortformer
as standard positions, the unfolded weights and unconverted detect_head numbers all miss.

The TransformerLens-free parts (CLI errors, export without TransformerLens) run without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inductionlab.configfile import load_config
from inductionlab.data.synthetic import BOS
from inductionlab.export import ExportError, export_transformer_lens, load_hooked_transformer, to_hooked_transformer
from inductionlab.metrics.composition import composition_scores
from inductionlab.metrics.copying import copying_ratios, ov_positivity, sample_tokens
from inductionlab.metrics.fold import fold_layer_norm
from inductionlab.metrics.heads import prefix_matching_score, prefix_matching_targets, previous_token_score
from inductionlab.models import build_model

LOGIT_TOL = 1e-4
SCORE_TOL = 1e-5
PERIOD, COPIES, N_SEQ = 25, 3, 8  # [BOS] + r r r: 76 tokens (detect_head needs fewer than n_ctx = 80)


@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip("transformer_lens", reason="TransformerLens not installed: pip install -e '.[tl]'")


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """``(cfg, model, run_dir)``: learned positions, no LayerNorm, 400 steps (~15 s on 1 thread)."""
    from inductionlab.evaluation import load_run
    from inductionlab.train import train

    out = tmp_path_factory.mktemp("learned") / "run"
    cfg = load_config("induction-2l", ["model.positions=learned", "model.layernorm=false", "train.steps=400",
                                       "train.target_accuracy=0", "train.threads=1", 'train.full_metrics="final"',
                                       "train.log_evals=0", "train.eval_every=400", "data.eval_sequences=32"])
    train(cfg, out, progress=False)
    cfg, model = load_run(out)
    return cfg, model, out


@pytest.fixture(scope="module", params=["rotary_ln", "learned_no_ln"])
def run(request, tl, tmp_path_factory):
    """``(model, export_dir, name)`` for each trained run, exported once."""
    if request.param == "rotary_ln":
        cfg, model, run_dir, _ = request.getfixturevalue("trained_2l")
        assert cfg.model.positions == "rotary" and cfg.model.layernorm
    else:
        cfg, model, run_dir = request.getfixturevalue("learned_run")
        assert cfg.model.positions == "learned" and not cfg.model.layernorm
    out = export_transformer_lens(run_dir, tmp_path_factory.mktemp("export") / request.param)
    return model, out, request.param


def repeated_tokens(seed: int = 0) -> torch.Tensor:
    """``[N_SEQ, 1 + COPIES * PERIOD]``: ``[BOS] + r + r + r``, r of *distinct* non-BOS tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(255, generator=g)[:PERIOD] + 1 for _ in range(N_SEQ)]
    return torch.stack([torch.cat([torch.tensor([BOS]), r.repeat(COPIES)]) for r in rows])


# --------------------------------------------------------------------------- logits
def test_exported_files_and_logits(run):
    model, out, _ = run
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ht = load_hooked_transformer(out)
    toks = torch.randint(0, 256, (16, 80), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = BOS
    with torch.no_grad():
        ours, theirs = model(toks), ht(toks)
    assert (ours - theirs).abs().max() < LOGIT_TOL
    pats = model.patterns(toks)
    _, cache = ht.run_with_cache(toks)
    for layer, p in pats.items():
        assert (p - cache["pattern", layer]).abs().max() < 1e-5


def _ht_with(tl, model, **overrides):
    """A HookedTransformer of ``model``'s weights with config entries overridden (a wrong mapping)."""
    from inductionlab.export import transformer_lens_config, transformer_lens_state_dict

    cfg = {**transformer_lens_config(model.cfg), **overrides, "device": "cpu"}
    ht = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    missing, unexpected = ht.load_state_dict(transformer_lens_state_dict(model), strict=False)
    assert not unexpected and all(k.rsplit(".", 1)[-1] in ("mask", "IGNORE", "rotary_sin", "rotary_cos") for k in missing)
    return ht.eval()


def test_a_wrong_rotary_layout_would_be_caught(tl, trained_2l):
    """The logits test is sensitive: GPT-J (adjacent pairs) rotary instead of rotate-half differs."""
    _, model, _, _ = trained_2l
    toks = repeated_tokens()
    with torch.no_grad():
        assert (model(toks) - _ht_with(tl, model)(toks)).abs().max() < LOGIT_TOL
        assert (model(toks) - _ht_with(tl, model, rotary_adjacent_pairs=True)(toks)).abs().max() > 0.1


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "shortformer", "none"])
@pytest.mark.parametrize("layernorm,mlp", [(False, False), (True, True)])
def test_every_representable_architecture_maps_exactly(tl, positions, layernorm, mlp):
    """Untrained models with random LayerNorm parameters and biases (so that every tensor matters)."""
    cfg = load_config("induction-2l", [f'model.positions="{positions}"', f"model.layernorm={str(layernorm).lower()}",
                                       f"model.mlp={str(mlp).lower()}", 'model.init="transformer-lens"',
                                       "model.d_model=32", "model.n_heads=2", "model.n_ctx=40",
                                       "data.period_min=5", "data.period_max=10"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("weight", "bias")) or ".b_" in name or name == "b_U":
                    p.add_(0.3 * torch.randn_like(p))
    ht = to_hooked_transformer(model)
    assert ht.cfg.positional_embedding_type == {"rotary": "rotary", "shortformer": "shortformer"}.get(positions, "standard")
    toks = torch.randint(0, 256, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(toks)
        assert (ours - ht(toks)).abs().max() < LOGIT_TOL
        if mlp:  # act_fn "gelu" is the exact (erf) GELU (~1e-6 here); the tanh approximation is ~1e-3 off
            assert (ours - _ht_with(tl, model, act_fn="gelu_pytorch_tanh")(toks)).abs().max() > 3 * LOGIT_TOL
        if positions == "shortformer":  # positions on Q/K only: "standard" (added to the stream) differs
            assert (ours - _ht_with(tl, model, positional_embedding_type="standard")(toks)).abs().max() > 10 * LOGIT_TOL


def test_transformer_lens_fold_ln_is_exact_except_for_shortformer_with_layernorm(tl):
    """TransformerLens folds ln1's scale into W_Q/W_K, but shortformer adds W_pos *after* ln1, so
    fold_ln changes a shortformer + LayerNorm model (load it unprocessed); with learned positions
    it is exact (log-probabilities: centre_unembed shifts logits)."""
    for positions, exact in (("learned", True), ("shortformer", False)):
        cfg = load_config("induction-2l", [f'model.positions="{positions}"', 'model.init="transformer-lens"',
                                           "model.d_model=32", "model.n_heads=2"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg.model).eval()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(("weight", "bias")):
                        p.add_(0.3 * torch.randn_like(p))
        toks = repeated_tokens()
        with torch.no_grad():
            ours = torch.log_softmax(model(toks), -1)
            folded = torch.log_softmax(to_hooked_transformer(model, fold_ln=True, center_writing_weights=True,
                                                             center_unembed=True, fold_value_biases=True)(toks), -1)
        err = float((ours - folded).abs().max())
        assert (err < LOGIT_TOL) if exact else (err > 1e-2), (positions, err)


# --------------------------------------------------------------------------- head detector
def _detect(tl, ht, tokens, pattern, monkeypatch) -> torch.Tensor:
    """``[n_layers, n_heads]`` mean over sequences of ``detect_head`` (error_measure "mul", nothing
    excluded). The models have no tokenizer, so ``to_tokens`` is made to return the tokens."""
    from transformer_lens.head_detector import detect_head

    scores = []
    for row in tokens:
        monkeypatch.setattr(ht, "to_tokens", lambda *_a, row=row, **_k: row[None])
        det = pattern(row) if callable(pattern) else pattern
        scores.append(detect_head(ht, "", det, exclude_bos=False, exclude_current_token=False, error_measure="mul"))
    return torch.stack(scores).mean(0)


def test_head_scores_equal_detect_head(tl, run, monkeypatch):
    """Conventions. ``detect_head(..., error_measure="mul")`` is sum(pattern * detection) /
    sum(pattern) = (attention on the detection cells, summed over *all* T queries) / T. Ours average
    over the queries that can score: previous-token over queries q >= 2 (with BOS), prefix
    matching over queries in the second copy onwards (T - 1 - P of them). So

    * previous-token: ours = detect_head(pattern with ones at (q, q-1), q >= 2) * T / (T - 2); the
      built-in "previous_token_head" also counts (1, 0) (query 1 on BOS):
      ours = (T * detect_head("previous_token_head") - mean p[1, 0]) / (T - 2);
    * prefix matching: on [BOS] + r r r with r of distinct tokens, the built-in "induction_head"
      pattern (keys right after an earlier occurrence of the query's token) *is* our target set
      (checked cell by cell), and ours = detect_head("induction_head") * T / (T - 1 - P). With
      repeated tokens inside r they differ: detect_head counts chance repeats, ours ignores them.
    """
    from transformer_lens.head_detector import get_induction_head_detection_pattern

    model, out, _ = run
    ht = load_hooked_transformer(out)
    toks = repeated_tokens()
    T, P = toks.shape[1], PERIOD
    periods = torch.full((N_SEQ,), P)
    pats = model.patterns(toks)
    prev = torch.stack([previous_token_score(pats[layer]) for layer in sorted(pats)])
    pm = torch.stack([prefix_matching_score(pats[layer], periods) for layer in sorted(pats)])

    targets, _ = prefix_matching_targets(periods, T)
    for row, tgt in zip(toks, targets):
        assert torch.equal(get_induction_head_detection_pattern(row[None]).bool(), tgt)

    prev_cells = torch.zeros(T, T)
    prev_cells[torch.arange(2, T), torch.arange(1, T - 1)] = 1
    assert torch.allclose(_detect(tl, ht, toks, prev_cells, monkeypatch) * T / (T - 2), prev, atol=SCORE_TOL)
    builtin = _detect(tl, ht, toks, "previous_token_head", monkeypatch)
    _, cache = ht.run_with_cache(toks)
    p10 = torch.stack([cache["pattern", layer][:, :, 1, 0].mean(0) for layer in range(len(pats))])
    assert torch.allclose((T * builtin - p10) / (T - 2), prev, atol=SCORE_TOL)
    induction = _detect(tl, ht, toks, "induction_head", monkeypatch)
    assert torch.allclose(induction * T / (T - 1 - P), pm, atol=SCORE_TOL)
    # the conversion matters: unconverted, detect_head's numbers are smaller by about (T-1-P)/T
    assert not torch.allclose(induction, pm, atol=1e-2) or float(pm.max()) < 0.02


# --------------------------------------------------------------------------- weight metrics
def _fold_matches(ht, model) -> float:
    """Largest difference between ``fold_layer_norm(model)`` and the processed HookedTransformer."""
    w = fold_layer_norm(model)
    diffs = [(w.W_E - ht.W_E).abs().max(), (w.W_U - ht.W_U).abs().max(), (w.b_U - ht.b_U).abs().max()]
    for layer, f in w.attention_layers:
        for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            diffs.append((getattr(f, k) - getattr(ht.blocks[layer].attn, k)).abs().max())
    return float(max(diffs))


def test_fold_equals_transformer_lens_processing(tl, run):
    """Every folded tensor equals TransformerLens's fold_ln + center_writing_weights (no
    center_unembed, no value-bias folding: those are not part of our fold)."""
    model, out, name = run
    ht = load_hooked_transformer(out, fold_ln=True, center_writing_weights=True)
    assert _fold_matches(ht, model) < 1e-6
    if name == "rotary_ln":
        assert _fold_matches(load_hooked_transformer(out), model) > 1e-2  # the fold does something


def test_fold_equals_transformer_lens_processing_on_random_layernorm(tl):
    """Random LayerNorm parameters (trained ones stay near (1, 0)), with MLPs and learned positions."""
    cfg = load_config("induction-2l", ["model.mlp=true", "model.positions=learned", 'model.init="transformer-lens"'])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        rand = build_model(cfg.model).eval()
        with torch.no_grad():
            for pname, p in rand.named_parameters():
                if pname.endswith(("weight", "bias")) or ".b_" in pname:
                    p.add_(0.5 * torch.randn_like(p))
    assert _fold_matches(to_hooked_transformer(rand, fold_ln=True, center_writing_weights=True), rand) < 1e-5


def test_composition_equals_all_composition_scores(tl, run):
    """TransformerLens defaults with fold_ln=True (centre writing weights, centre unembed, fold value
    biases): all_composition_scores(mode)[l1, h1, l2, h2] == ours[src][dst] for l1 < l2."""
    model, out, name = run
    ht = load_hooked_transformer(out, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                 fold_value_biases=True)
    ours = composition_scores(model)
    n_layers, n_heads = ht.cfg.n_layers, ht.cfg.n_heads
    n = n_layers * n_heads
    raw = load_hooked_transformer(out)
    for mode in "QKV":
        theirs = ht.all_composition_scores(mode).reshape(n, n)
        mine = torch.tensor([[0.0 if v is None else v for v in row] for row in ours[mode.lower()]])
        assert (mine - theirs).abs().max() < 1e-5
        if name == "rotary_ln":  # folding matters: the unfolded weights are 100x the tolerance off (or more)
            assert (mine - raw.all_composition_scores(mode).reshape(n, n)).abs().max() > 1e-3


def test_ov_positivity_equals_factored_eigenvalues(tl, run):
    """Sum Re(lambda) / sum |lambda| of FactoredMatrix(W_E @ OV @ W_U).eigenvalues after fold_ln with
    TransformerLens's weight centring; ``center_unembed`` off: we keep W_U as folded (centring W_U
    over the vocabulary changes the eigenvalues slightly, see docs/metrics.md)."""
    model, out, _ = run
    ht = load_hooked_transformer(out, fold_ln=True, center_writing_weights=True)
    lam = (ht.W_E @ ht.OV @ ht.W_U).eigenvalues  # [n_layers, n_heads, d_head] (the nonzero ones)
    theirs = lam.real.sum(-1) / lam.abs().sum(-1)
    mine = ov_positivity(model)
    assert (torch.stack([mine[layer] for layer in sorted(mine)]) - theirs).abs().max() < 1e-4


def test_copying_ratio_agrees_with_folded_transformer_lens(tl, run):
    """The copying ratio recomputed on TransformerLens's processed weights (defaults with fold_ln;
    its centred W_U changes every logit of a token by the same amount, which the ratio removes)."""
    model, out, _ = run
    ht = load_hooked_transformer(out, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                 fold_value_biases=True)
    toks = sample_tokens(ht.cfg.d_vocab, 200)
    mine = copying_ratios(model)
    for layer in range(ht.cfg.n_layers):
        ov = ht.OV[layer].AB  # [n_heads, d_model, d_model]
        logits = ht.W_E[toks] @ ov @ ht.W_U  # [n_heads, n_tokens, d_vocab]
        pos = torch.relu(logits - logits.mean(-1, keepdim=True))
        ratio = (pos[:, torch.arange(len(toks)), toks] / pos.sum(-1)).mean(-1)
        assert (mine[layer] - ratio).abs().max() < SCORE_TOL


# --------------------------------------------------------------------------- CLI and errors
def _cli(*args: str, env_block_tl: bool = False) -> subprocess.CompletedProcess:
    code = "import sys; sys.modules['transformer_lens'] = None; " if env_block_tl else "import sys; "
    code += "from inductionlab.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two-step runs of each architecture TransformerLens cannot represent, and one it can."""
    from inductionlab.train import train

    root = tmp_path_factory.mktemp("tiny")
    runs = {}
    quick = ["train.steps=2", "train.threads=1", "train.target_accuracy=0", 'train.full_metrics="final"',
             "data.eval_sequences=8"]
    for name, preset, extra in (("conv", "induction-conv-attn", []), ("smeared", "induction-smeared-1l", []),
                                ("qkv_conv", "induction-1l", ["model.qkv_conv=3"]),
                                ("no_final_ln", "induction-1l", ["model.layernorm=true", "model.final_ln=false"]),
                                ("ok", "induction-1l", [])):
        train(load_config(preset, quick + extra), root / name, progress=False)
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("name,words", [("conv", "conv layer"), ("smeared", "smeared keys"),
                                        ("qkv_conv", "qkv_conv"), ("no_final_ln", "final_ln")])
def test_cli_refuses_what_transformer_lens_cannot_represent(tiny_runs, tmp_path, name, words):
    res = _cli("export", str(tiny_runs[name]), "--to", "transformer-lens", "--out", str(tmp_path / "x"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr and words in lines[0], res.stderr
    assert lines[0].startswith("inductionlab: error: cannot export to TransformerLens")
    assert not (tmp_path / "x").exists() and res.stdout == ""


def test_cli_export_writes_the_two_files_without_transformer_lens(tiny_runs, tmp_path):
    """Writing needs no TransformerLens (the import is blocked in the child process)."""
    out = tmp_path / "exp"
    res = _cli("export", str(tiny_runs["ok"]), "--to", "transformer-lens", "--out", str(out), env_block_tl=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_layers"] == 1 and cfg["positional_embedding_type"] == "rotary" and cfg["rotary_dim"] == 16
    again = _cli("export", str(tiny_runs["ok"]), "--to", "transformer-lens", "--out", str(out))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "not empty" in again.stderr
    step = _cli("export", str(tiny_runs["ok"]), "--to", "transformer-lens", "--out", str(tmp_path / "s"), "--step", "999")
    assert step.returncode == 2 and "no checkpoint at step 999" in step.stderr


def test_cli_export_entry_point(tl, trained_2l, tmp_path):
    """``python -m inductionlab export`` on the trained run; the files load into TransformerLens."""
    _, model, run_dir, _ = trained_2l
    out = tmp_path / "tl"
    res = subprocess.run([sys.executable, "-m", "inductionlab", "export", str(run_dir), "--to", "transformer-lens",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "config.json" in res.stdout and (out / "model.safetensors").is_file()
    toks = repeated_tokens()
    with torch.no_grad():
        assert (load_hooked_transformer(out)(toks) - model(toks)).abs().max() < LOGIT_TOL


def test_loading_without_transformer_lens_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)
    model = build_model(load_config("induction-1l").model)
    with pytest.raises(ExportError, match=r"pip install -e '\.\[tl\]'"):
        to_hooked_transformer(model)


def test_export_refuses_a_file_as_out(tiny_runs, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_transformer_lens(tiny_runs["ok"], f)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_transformer_lens(tiny_runs["ok"], empty) == empty  # an empty directory is fine
    assert isinstance(Path(empty / "config.json").read_text(), str)

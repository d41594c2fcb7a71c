"""``model.init``: the schemes draw what the libraries they are named after draw."""

import math

import pytest
import torch
from torch import nn

from inductionlab.config import ConfigError
from inductionlab.configfile import dump_toml, load_config
from inductionlab.models import build_model


def _model(init, *extra):
    torch.manual_seed(0)
    return build_model(load_config("induction-2l", [f"model.init={init}", "model.mlp=true", *extra]).model)


def _like(ours: torch.Tensor, ref: torch.Tensor, rel: float = 0.08):
    """Same distribution, by its scale and range (different draws)."""
    ours, ref = ours.detach(), ref.detach()
    assert abs(float(ours.std()) - float(ref.std())) <= rel * float(ref.std())
    assert abs(float(ours.abs().max()) - float(ref.abs().max())) <= 2 * rel * float(ref.abs().max())


def test_torch_scheme_matches_pytorch_layer_defaults():
    m = _model("torch")
    cfg = m.cfg
    h, d, e, v = cfg.n_heads, cfg.d_model, cfg.head_dim, cfg.vocab_size
    torch.manual_seed(1)
    emb = nn.Embedding(v, d)
    qkv = nn.Linear(d, h * e)  # one Linear reading the residual stream
    out = nn.Linear(h * e, d)  # W_O reads the concatenated heads
    unembed = nn.Linear(d, v)
    mlp_out = nn.Linear(cfg.mlp_dim, d)
    _like(m.W_E, emb.weight)
    _like(m.blocks[0].attn.W_Q, qkv.weight)
    _like(m.blocks[1].attn.W_V, qkv.weight)
    _like(m.blocks[0].attn.W_O, out.weight)
    _like(m.blocks[0].attn.b_Q, torch.cat([qkv.bias] * 8), rel=0.15)
    _like(m.W_U, unembed.weight)
    _like(m.b_U, unembed.bias, rel=0.15)
    _like(m.blocks[0].mlp.W_out, mlp_out.weight)


def test_transformer_lens_scheme_matches_hooked_transformer():
    tl = pytest.importorskip("transformer_lens")
    m = _model("transformer-lens")
    c = m.cfg
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(
        n_layers=2, d_model=c.d_model, n_heads=c.n_heads, d_head=c.head_dim, d_mlp=c.mlp_dim, n_ctx=c.n_ctx,
        d_vocab=c.vocab_size, act_fn="gelu", normalization_type="LN", seed=1))
    for name in ("W_E", "blocks.0.attn.W_Q", "blocks.1.attn.W_O", "blocks.0.mlp.W_in", "W_U"):
        _like(m.get_parameter(name), ref.get_parameter(name))
    assert float(m.blocks[0].attn.b_Q.abs().max()) == 0.0


def test_gpt2_scheme_is_normal_with_init_std():
    m = _model("gpt2", "model.init_std=0.05")
    for p in (m.W_E, m.blocks[0].attn.W_K, m.W_U):
        assert abs(float(p.std()) - 0.05) < 0.004
    assert float(m.b_U.abs().max()) == 0.0


def test_schemes_differ_and_are_recorded():
    scales = {s: float(_model(s).W_E.std()) for s in ("gpt2", "torch", "transformer-lens")}
    assert scales["gpt2"] < 0.03 < scales["transformer-lens"] < 0.2 < scales["torch"]
    assert abs(scales["transformer-lens"] - 0.8 / math.sqrt(64)) < 0.01
    cfg = load_config("induction-2l-classic")
    assert cfg.model.init == "torch" and 'init = "torch"' in dump_toml(cfg)
    with pytest.raises(ConfigError, match="model.init must be one of"):
        load_config("induction-2l", ["model.init=xavier"])


def test_layernorm_and_mixer_parameters_keep_their_own_init():
    m = _model("torch", "model.arch=smeared-1l", "model.smear_init=0.5")
    assert torch.equal(m.blocks[0].ln1.weight, torch.ones(64))
    assert torch.equal(m.blocks[0].attn.alpha, torch.full((4,), 0.5))

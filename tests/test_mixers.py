"""The mixer protocol: a mixer named by import path trains with no edit of inductionlab, mixers own
their ``[model.<table>]`` settings, and the old flat keys still read."""

import json
import textwrap
import tomllib

import pytest
import torch

from inductionlab.causality import CausalityError, check_causal
from inductionlab.config import ConfigError, config_from_dict
from inductionlab.configfile import apply_overrides, dump_toml, load_config
from inductionlab.models import LAYER_KINDS, build_model, mixer_spec

#: a user's mixers, in a file outside the package
USER_MIXERS = '''
from dataclasses import dataclass

import torch
from torch import nn

from inductionlab.errors import ConfigError
from inductionlab.models.hooks import run


@dataclass
class CumMeanConfig:
    scale: float = 1.0

    def validate(self, key, model):
        if not self.scale > 0:
            raise ConfigError(f"{key}.scale must be > 0, got {self.scale}")


class CumMean(nn.Module):
    """out_t = scale * W (mean of x_1..x_t): causal, no attention."""

    scope = "cummean"
    Config = CumMeanConfig
    config_name = "cummean"

    def __init__(self, cfg, name, settings):
        super().__init__()
        self.name, self.scale = name, settings.scale
        self.W = nn.Parameter(torch.randn(cfg.d_model, cfg.d_model) * cfg.init_std)

    def forward(self, x, ctx=None, pos=None):
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        return run(ctx, f"{self.name}.hook_out", self.scale * (x.cumsum(1) / steps) @ self.W)


@dataclass
class PlainConfig:
    width: int = 2


class Plain(nn.Module):
    """Settings under the default table name: the import path ([model."mod:Plain"])."""

    Config = PlainConfig

    def __init__(self, cfg, name, settings):
        super().__init__()
        self.width = settings.width
        self.W = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x, ctx=None, pos=None):
        return x * self.W


class Leaky(CumMean):
    """Sees the whole sequence: the causality guard must refuse it."""

    scope = "leaky"
    config_name = "leaky"

    def forward(self, x, ctx=None, pos=None):
        return x.mean(1, keepdim=True).expand_as(x) @ self.W * 10
'''

QUICK = ["train.steps=3", "train.threads=1", "train.target_accuracy=0", 'train.full_metrics="final"',
         "data.eval_sequences=8", "train.track_every=0", "train.eval_every=3", "train.log_evals=0",
         "train.checkpoint_every=0", "train.checkpoint_minutes=0"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The name of a module of user mixers, written to tmp_path and put on sys.path."""
    name = f"user_mixers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MIXERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _toml(tmp_path, mod: str, mixer: str = "CumMean", table: str = "[model.cummean]\nscale = 0.5") -> str:
    """A small config whose first layer is ``mod:mixer``, with the mixer's settings ``table``."""
    path = tmp_path / "user.toml"
    model = textwrap.dedent(f"""\
        name = "user-mixer"

        [model]
        layers = ["{mod}:{mixer}", "attn"]
        vocab_size = 32
        d_model = 16
        n_heads = 2
        n_ctx = 24
        layernorm = true
        mlp = true
        """)
    path.write_text(f"{model}\n{table}\n\n[data]\nperiod_min = 4\nperiod_max = 8\n")
    return str(path)


def test_a_mixer_named_by_import_path_trains(tmp_path, user_module):
    from inductionlab.train import train

    cfg = load_config(_toml(tmp_path, user_module), QUICK)
    assert cfg.model.cummean.scale == 0.5 and cfg.model.mixers["cummean"].scale == 0.5
    model = build_model(cfg.model)
    check_causal(model, cfg.model.vocab_size, cfg.model.n_ctx)  # what train runs first
    assert [i for i, _ in model.attention_layers] == [1]  # the user's mixer is not per-head attention
    assert model.blocks[0].mlp is None and model.blocks[1].mlp is not None
    assert "blocks.0.cummean.W" in dict(model.named_parameters())
    _, cache = model.run_with_cache(torch.randint(0, 32, (2, 24)), ["blocks.0.cummean.hook_out"])
    assert cache["blocks.0.cummean.hook_out"].shape == (2, 24, 16)

    out = tmp_path / "run"
    train(cfg, out, progress=False)
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["model"]["cummean"] == {"scale": 0.5}
    assert load_config(str(out / "config.toml")) == cfg
    assert json.loads((out / "summary.json").read_text())


def test_a_user_mixers_settings_override_validate_and_round_trip(tmp_path, user_module):
    path = _toml(tmp_path, user_module)
    assert load_config(path, ["model.cummean.scale=2.0"]).model.cummean.scale == 2.0
    with pytest.raises(ConfigError, match="model.cummean.scale must be > 0"):
        load_config(path, ["model.cummean.scale=-1.0"])
    with pytest.raises(ConfigError, match="unknown config key 'model.cummean.width'"):
        load_config(path, ["model.cummean.width=3"])
    # settings of a mixer without config_name live under its import path (a quoted TOML key)
    plain = f"{user_module}:Plain"
    cfg = load_config(_toml(tmp_path, user_module, "Plain", f'[model."{plain}"]\nwidth = 4'),
                      [f'model."{plain}".width=5'])
    assert cfg.model.mixers[plain].width == 5
    assert f'[model."{plain}"]' in dump_toml(cfg)
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg
    assert "cummean" not in cfg.model.mixers
    with pytest.raises(ConfigError, match="unknown config key 'model.cummean'"):
        config_from_dict(apply_overrides(tomllib.loads(dump_toml(cfg)), ["model.cummean.scale=1.0"]))


def test_the_causality_guard_refuses_a_leaky_user_mixer(tmp_path, user_module):
    cfg = load_config(_toml(tmp_path, user_module, "Leaky", "[model.leaky]\nscale = 1.0"))
    with pytest.raises(CausalityError, match="not causal"):
        check_causal(build_model(cfg.model), cfg.model.vocab_size, cfg.model.n_ctx)


@pytest.mark.parametrize("kind, fragment", [
    ("no_such_module_xyz:Mixer", "cannot import module 'no_such_module_xyz'"),
    ("inductionlab.models.conv:NoSuchMixer", "has no 'NoSuchMixer'"),
    ("inductionlab.models.conv:PADDINGS", "is not an nn.Module class"),
    ("nope", "unknown layer kind 'nope'"),
])
def test_unknown_or_unimportable_mixers_are_one_line_config_errors(kind, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config("induction-2l", [f'model.layers=["{kind}"]'])
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_cli_names_an_unimportable_mixer_on_one_line(tmp_path, capsys):
    from inductionlab.cli import main

    code = main(["train", "induction-2l", "--set", 'model.layers=["no_such_module_xyz:M"]',
                 "--out", str(tmp_path / "o"), "--no-report", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "no_such_module_xyz" in err[0]


def test_every_registered_kind_follows_the_protocol():
    for kind in LAYER_KINDS:
        spec = mixer_spec(kind)
        assert spec.scope.isidentifier()
        assert not spec.per_head_attention or spec.scope == "attn"
    assert mixer_spec("smeared").config_name == mixer_spec("attn").config_name == "attn"
    assert mixer_spec("linear").per_head_attention and mixer_spec("linear").config_name == "linear"
    assert not mixer_spec("conv").per_head_attention and not mixer_spec("conv").mlp_after


def test_old_flat_keys_read_as_the_subtables(tmp_path):
    new = load_config("induction-conv-attn", ["model.conv.kernel=3", "model.conv.residual=false",
                                              "model.attn.qkv_conv=2", "model.attn.smear_init=0.5",
                                              "model.conv.padding=same", "model.attn.qkv_padding=same"])
    old_set = load_config("induction-conv-attn", ["model.conv_kernel=3", "model.conv_residual=false",
                                                  "model.qkv_conv=2", "model.smear_init=0.5",
                                                  "model.conv_padding=same"])
    assert old_set == new
    raw = tomllib.loads(dump_toml(new))
    flat = {k: v for k, v in raw["model"].items() if not isinstance(v, dict)}
    flat.update(conv_kernel=3, conv_residual=False, qkv_conv=2, smear_init=0.5, conv_padding="same")
    old_file = tmp_path / "old.toml"  # a config.toml of a run saved before the subtables
    old_file.write_text(dump_toml(new).split("[model]")[0] + "[model]\n"
                        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in flat.items())
                        + "\n[data" + dump_toml(new).split("[data", 1)[1])
    assert load_config(str(old_file)) == new
    assert new.model.conv_kernel == 3 and new.model.qkv_conv == 2  # read-only aliases
    with pytest.raises(ConfigError, match="both set"):
        config_from_dict({**raw, "model": {**raw["model"], "conv_kernel": 7}})


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_linear_attention_chunks_equal_the_formula(chunk):
    """The fast path's chunked prefix sums (several chunks, a ragged last one) equal
    z_i = sum_{j<=i} (phi_q_i . phi_k_j) v_j / sum_{j<=i} phi_q_i . phi_k_j."""
    from inductionlab.models.linear_attention import causal_linear_attention

    g = torch.Generator().manual_seed(0)
    fq, fk, v = (torch.rand(2, 3, 17, 4, generator=g, dtype=torch.float64) for _ in range(3))
    kernel = torch.einsum("bhie,bhje->bhij", fq, fk).tril()
    expect = (kernel @ v) / kernel.sum(-1, keepdim=True)
    torch.testing.assert_close(causal_linear_attention(fq, fk, v, eps=1e-12, chunk=chunk), expect)


def test_a_class_without_the_mixer_constructor_is_one_config_error(capsys):
    from inductionlab.cli import main

    assert main(["train", "induction-2l", "--set", 'model.layers=["attn", "torch.nn:Linear"]', "--quiet",
                 "--no-report", "--out", "/nonexistent-dir/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inductionlab: error:") and "torch.nn:Linear" in err and "\n" not in err

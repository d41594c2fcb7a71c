import pytest

from inductionlab.config import ConfigError, config_from_dict
from inductionlab.configfile import apply_overrides, dump_toml, load_config, preset_names


def test_every_preset_loads():
    names = preset_names()
    for required in ("induction-2l", "induction-1l", "induction-smeared-1l", "induction-conv-attn",
                     "induction-2l-fixed", "induction-2l-classic"):
        assert required in names
    for name in names:
        load_config(name)


def test_classic_preset_has_the_study_settings():
    c = load_config("induction-2l-classic")
    assert (c.model.vocab_size, c.model.d_model, c.model.n_heads, c.model.n_ctx) == (256, 64, 4, 80)
    assert (c.data.period_min, c.data.period_max, c.data.period_mode) == (20, 29, "batch")
    assert (c.train.batch_size, c.train.lr, c.train.betas, c.train.weight_decay, c.train.steps) == \
        (32, 1e-3, (0.9, 0.98), 0.01, 20000)
    assert c.train.schedule == "constant" and not c.model.layernorm


def test_overrides_are_typed():
    c = load_config("induction-2l", ["train.lr=3e-3", "model.layernorm=false", "train.betas=[0.8, 0.9]",
                                     "model.positions=none", "name=x"])
    assert c.train.lr == 3e-3 and c.model.layernorm is False and c.train.betas == (0.8, 0.9)
    assert c.model.positions == "none" and c.name == "x"


def test_dump_roundtrip(tmp_path):
    c = load_config("induction-conv-attn", ["train.seed=7"])
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(c))
    assert load_config(str(p)) == c


@pytest.mark.parametrize("overrides, message", [
    (["model.no_such=1"], "unknown config key 'model.no_such'"),
    (["no.such.key=1"], "unknown config key 'no.such.key'"),
    (["train.lr=fast"], "train.lr: expected a number"),
    (["train.steps=1.5"], "train.steps: expected an integer"),
    (["model.layernorm=1"], "expected true/false"),
    (["model.d_model=65"], "not divisible by model.n_heads"),
    (["data.period_max=50"], "longer than the context"),
    (["data.period_min=30"], "must be >= 1 and <= data.period_max"),
    (["model.arch=nope"], "unknown architecture 'nope'"),
    (["model.positions=alibi"], "model.positions must be one of"),
    (["train.schedule=linear"], "train.schedule must be one of"),
    (["noequals"], "--set expects section.key=value"),
])
def test_bad_overrides_give_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config("induction-2l", overrides)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("broken = [toml\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="unknown config section"):
        config_from_dict({"modle": {}})
    with pytest.raises(ConfigError, match=r"\[model\] must be a table"):
        config_from_dict(apply_overrides({"model": 3}, []))

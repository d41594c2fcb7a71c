import pytest

from inductionlab.causality import CausalityError, check_causal
from inductionlab.config import POSITIONS, ModelConfig
from inductionlab.configfile import load_config
from inductionlab.models import ARCHITECTURES, AttnConfig, ConvConfig, build_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("positions", POSITIONS)
def test_every_architecture_and_position_scheme_is_causal(arch, positions):
    cfg = ModelConfig(arch=arch, vocab_size=40, d_model=32, n_heads=4, n_ctx=20, positions=positions,
                      layernorm=True, mlp=True, init_std=0.2,
                      mixers={"attn": AttnConfig(qkv_conv=3 if arch == "attn-attn" else 0)})
    check_causal(build_model(cfg), 40, 20)


@pytest.mark.parametrize("residual", [True, False])
def test_leaky_conv_is_caught(residual):
    cfg = ModelConfig(arch="conv-attn", vocab_size=40, d_model=32, n_heads=4, n_ctx=20,
                      mixers={"conv": ConvConfig(padding="same", residual=residual)}, init_std=0.2)
    with pytest.raises(CausalityError, match="not causal"):
        check_causal(build_model(cfg), 40, 20)


@pytest.mark.parametrize("init_std", [0.01, 0.2])
@pytest.mark.parametrize("arch", ["attn-only-1l", "attn-only-2l"])
def test_small_leaks_in_small_logit_models_are_caught(arch, init_std):
    """No LayerNorm, tiny init: logits (and so the leak) are far below 1."""
    cfg = ModelConfig(arch=arch, vocab_size=40, d_model=32, n_heads=4, n_ctx=20, layernorm=False, init_std=init_std,
                      mixers={"attn": AttnConfig(qkv_conv=3, qkv_padding="same")})
    with pytest.raises(CausalityError):
        check_causal(build_model(cfg), 40, 20)


@pytest.mark.parametrize("init_std", [0.01, 0.02])
def test_small_init_causal_models_pass(init_std):
    cfg = ModelConfig(arch="attn-only-2l", vocab_size=40, d_model=32, n_heads=4, n_ctx=20,
                      layernorm=False, init_std=init_std, mixers={"attn": AttnConfig(qkv_conv=3)})
    check_causal(build_model(cfg), 40, 20)


def test_leaky_primer_qkv_conv_is_caught():
    cfg = ModelConfig(arch="attn-only-1l", vocab_size=40, d_model=32, n_heads=4, n_ctx=20,
                      init_std=0.2, mixers={"attn": AttnConfig(qkv_conv=3, qkv_padding="same")})
    with pytest.raises(CausalityError):
        check_causal(build_model(cfg), 40, 20)


def test_train_refuses_a_leaky_model(tmp_path):
    from inductionlab.train import train

    cfg = load_config("induction-conv-attn", ["model.conv_padding=same", "train.steps=5"])
    with pytest.raises(CausalityError):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written

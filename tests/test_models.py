import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from inductionlab.config import POSITIONS, ModelConfig
from inductionlab.models import ARCHITECTURES, AttnConfig, ConvConfig, build_model


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=50, d_model=32, n_heads=4, n_ctx=24)
    base.update(kw)
    return ModelConfig(**base)


def test_weight_layout_is_transformerlens():
    m = build_model(small(arch="attn-only-2l"))
    a = m.blocks[1].attn
    assert a.W_Q.shape == (4, 32, 8) and a.W_K.shape == (4, 32, 8) and a.W_V.shape == (4, 32, 8)
    assert a.W_O.shape == (4, 8, 32) and a.b_O.shape == (32,)
    assert m.W_E.shape == (50, 32) and m.W_U.shape == (32, 50)
    names = dict(m.named_parameters())
    assert "blocks.1.attn.W_Q" in names and "W_E" in names


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("opts", [dict(), dict(layernorm=True, mlp=True)])
def test_fast_path_equals_pattern_path(arch, opts):
    torch.manual_seed(0)
    m = build_model(small(arch=arch, positions="rotary", init_std=0.3, **opts)).double().eval()
    tokens = torch.randint(0, 50, (3, 24))
    fast = m(tokens)
    slow, cache = m.run_with_cache(tokens)
    torch.testing.assert_close(fast, slow, atol=1e-9, rtol=1e-9)
    for layer, _ in m.attention_layers:
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pat.shape == (3, 4, 24, 24)
        torch.testing.assert_close(pat.sum(-1), torch.ones(3, 4, 24, dtype=torch.float64))
        assert torch.all(pat.triu(1) == 0)


def test_smeared_keys_formula():
    m = build_model(small(arch="smeared-1l", positions="none", mixers={"attn": AttnConfig(smear_init=0.7)})).eval()
    tokens = torch.randint(0, 50, (2, 24))
    _, cache = m.run_with_cache(tokens, ["blocks.0.attn.hook_k", "blocks.0.hook_resid_pre"])
    a = m.blocks[0].attn
    x = cache["blocks.0.hook_resid_pre"]
    raw = torch.einsum("bpd,hde->bphe", x, a.W_K) + a.b_K
    s = torch.sigmoid(torch.tensor(0.7))
    expect = raw.clone()
    expect[:, 1:] = s * raw[:, 1:] + (1 - s) * raw[:, :-1]
    torch.testing.assert_close(cache["blocks.0.attn.hook_k"], expect)
    torch.testing.assert_close(a.smear_weight(), torch.full((4,), float(s)))


def test_conv_is_causal_depthwise_and_profile_layout():
    from inductionlab.models.conv import CausalDepthwiseConv

    c = CausalDepthwiseConv(2, 3)
    with torch.no_grad():
        c.weight.zero_()
        c.bias.zero_()
        c.weight[0, 0] = torch.tensor([1.0, 10.0, 100.0])  # offsets t-2, t-1, t
    x = torch.zeros(1, 5, 2)
    x[0, 2, 0] = 1.0
    y = c(x)[0, :, 0]
    assert y.tolist() == [0.0, 0.0, 100.0, 10.0, 1.0]
    assert c.kernel_by_offset()[0].tolist() == [100.0, 10.0, 1.0]


@pytest.mark.parametrize("positions", POSITIONS)
def test_positions_build_and_run(positions):
    m = build_model(small(positions=positions))
    assert m(torch.randint(0, 50, (2, 24))).shape == (2, 24, 50)


def test_primer_qkv_conv_and_non_residual_conv():
    m = build_model(small(arch="conv-attn",
                          mixers={"attn": AttnConfig(qkv_conv=3), "conv": ConvConfig(residual=False)}))
    assert m.blocks[0].residual is False
    assert m(torch.randint(0, 50, (2, 24))).shape == (2, 24, 50)


def test_rotary_extrapolates_but_learned_refuses_long_input():
    m = build_model(small(positions="rotary"))
    assert m(torch.randint(0, 50, (1, 40))).shape == (1, 40, 50)
    with pytest.raises(ValueError, match="exceeds the model context"):
        build_model(small(positions="learned"))(torch.randint(0, 50, (1, 40)))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_torch_func_and_vmap_over_stacked_models(arch):
    models = [build_model(small(arch=arch, positions="rotary")) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = models[0]
    tokens = torch.randint(0, 50, (2, 24))

    def f(p, b, x):
        return functional_call(base, (p, b), (x,))

    out = vmap(f, in_dims=(0, 0, None))(params, buffers, tokens)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(tokens), atol=1e-5, rtol=1e-4)


def test_hooks_can_replace_patterns_and_zero_heads():
    torch.manual_seed(1)
    m = build_model(small(arch="attn-only-1l", init_std=0.3)).eval()
    tokens = torch.randint(0, 50, (2, 24))
    uniform = torch.tril(torch.ones(24, 24))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    out1 = m.run_with_hooks(tokens, {"blocks.0.attn.hook_pattern": lambda p: uniform.expand_as(p)})
    out2 = m.run_with_hooks(tokens, {"blocks.0.attn.hook_pattern": lambda p: uniform.expand_as(p).clone()})
    torch.testing.assert_close(out1, out2)
    assert not torch.allclose(out1, m(tokens))
    zero_all = m.run_with_hooks(tokens, {"blocks.0.attn.hook_z": lambda z: torch.zeros_like(z)})
    resid_only = (m.W_E[tokens] + m.W_pos[:24] + m.blocks[0].attn.b_O) @ m.W_U + m.b_U
    torch.testing.assert_close(zero_all, resid_only, atol=1e-5, rtol=1e-4)

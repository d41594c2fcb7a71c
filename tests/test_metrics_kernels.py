"""Conv-kernel profiles and smeared-key weights read off hand-set parameters."""

import torch

from inductionlab.configfile import load_config
from inductionlab.metrics.kernels import (
    conv_kernel_profiles,
    kernel_profile,
    smear_sigmas,
)
from inductionlab.models import build_model


def test_kernel_profile_mean_over_channels_keeps_sign():
    k = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 4.0]])
    assert torch.allclose(kernel_profile(k), torch.tensor([2.0, -1.0, 2.0]))


def test_conv_profile_offset_zero_first():
    cfg = load_config("induction-conv-attn")
    model = build_model(cfg.model)
    conv = model.blocks[0].conv.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, -1] = 0.5   # current token (offset 0)
        conv.weight[:, 0, -2] = -1.0  # previous token (offset 1)
    prof = conv_kernel_profiles(model)
    assert list(prof) == [0]
    assert torch.allclose(prof[0], torch.tensor([0.5, -1.0, 0.0, 0.0, 0.0]))
    assert smear_sigmas(model) == {}


def test_smear_sigma_per_head():
    cfg = load_config("induction-smeared-1l")
    model = build_model(cfg.model)
    with torch.no_grad():
        model.blocks[0].attn.alpha.copy_(torch.tensor([0.0, 100.0, -100.0, 0.0]))
    s = smear_sigmas(model)
    assert torch.allclose(s[0], torch.tensor([0.5, 1.0, 0.0, 0.5]))
    assert conv_kernel_profiles(model) == {}

from .attention import Attention, AttnConfig, SmearedAttention
from .conv import CausalDepthwiseConv, ConvConfig, ConvMixer
from .hooks import HookContext
from .linear_attention import LinearAttention, LinearConfig
from .mixer import Mixer, MixerSpec
from .registry import ARCHITECTURES, LAYER_KINDS, layer_list, mixer_spec
from .transformer import Transformer, build_model

__all__ = ["Attention", "AttnConfig", "SmearedAttention", "CausalDepthwiseConv", "ConvConfig", "ConvMixer",
           "HookContext", "LinearAttention", "LinearConfig", "Mixer", "MixerSpec", "ARCHITECTURES",
           "LAYER_KINDS", "layer_list", "mixer_spec", "Transformer", "build_model"]

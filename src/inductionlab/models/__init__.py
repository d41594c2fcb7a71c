from .attention import Attention
from .conv import CausalDepthwiseConv, ConvMixer
from .hooks import HookContext
from .registry import ARCHITECTURES, LAYER_KINDS, layer_list
from .transformer import Transformer, build_model

__all__ = ["Attention", "CausalDepthwiseConv", "ConvMixer", "HookContext", "ARCHITECTURES",
           "LAYER_KINDS", "layer_list", "Transformer", "build_model"]

"""Initialisation schemes (``model.init``): when the phase change comes depends on them.

* ``gpt2``: every weight matrix ``W_*`` from N(0, ``model.init_std``) (GPT-2 uses 0.02), biases 0.
  This is what the modules draw when they are built.
* ``torch``: PyTorch's layer defaults, as a hand-written model of ``nn.Embedding`` and
  ``nn.Linear`` layers gets them: embeddings (``W_E``, ``W_pos``) from N(0, 1); every other
  weight matrix, and its bias, from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``nn.Linear``'s
  Kaiming-uniform with a = sqrt(5)), with ``fan_in`` the input width of the map (``d_model`` for
  ``W_Q``/``W_K``/``W_V``/``W_U``/``W_in``, ``n_heads * d_head`` for ``W_O``, ``d_mlp`` for ``W_out``).
* ``transformer-lens``: TransformerLens's default (``init_mode = "gpt2"`` with its default
  ``initializer_range = 0.8 / sqrt(d_model)``): every ``W_*`` from N(0, 0.8 / sqrt(d_model)),
  biases 0.

In every scheme LayerNorm starts at (1, 0), and mixer-specific parameters (conv kernels, the
smeared-key logit) keep their own initialisation (a near-identity conv, ``model.attn.smear_init``);
a mixer's ``W_*``/``b_*`` parameters in the names above (e.g. linear attention's) follow the scheme.
Draws come from the global RNG, which :func:`inductionlab.train.init_model` forks and seeds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the values of ``model.init`` (config.py imports them from here)
SCHEMES = ("gpt2", "torch", "transformer-lens")

#: bias name -> the weight whose fan-in bounds it under the ``torch`` scheme
_BIAS_OF = {"b_Q": "W_Q", "b_K": "W_K", "b_V": "W_V", "b_O": "W_O", "b_U": "W_U",
            "b_in": "W_in", "b_out": "W_out"}
#: weight name -> which of its dims are the input (fan-in) dims, in TransformerLens layout
_FAN_IN_DIMS = {"W_Q": (-2,), "W_K": (-2,), "W_V": (-2,), "W_O": (-3, -2), "W_U": (0,),
                "W_in": (0,), "W_out": (0,)}


def fan_in(name: str, w: torch.Tensor) -> int:
    """Input width of weight ``name`` (e.g. ``W_O[n_heads, d_head, d_model]`` -> n_heads * d_head)."""
    return math.prod(w.shape[d] for d in _FAN_IN_DIMS[name])


@torch.no_grad()
def apply_init(model: nn.Module, scheme: str, d_model: int) -> None:
    """Re-draw the weights of ``model`` under ``scheme`` (``gpt2`` keeps the built weights)."""
    if scheme == "gpt2":
        return
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose from {SCHEMES}")
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        for name, p in own.items():
            if scheme == "transformer-lens":
                if name.startswith("W_"):
                    p.normal_(0.0, 0.8 / math.sqrt(d_model))
                elif name.startswith("b_"):
                    p.zero_()
            elif name in ("W_E", "W_pos"):
                p.normal_(0.0, 1.0)
            elif name in _FAN_IN_DIMS:
                p.uniform_(-1, 1).mul_(1 / math.sqrt(fan_in(name, p)))
            elif name in _BIAS_OF:
                p.uniform_(-1, 1).mul_(1 / math.sqrt(fan_in(_BIAS_OF[name], own[_BIAS_OF[name]])))

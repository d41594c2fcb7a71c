"""Export a trained run to TransformerLens 3.9 (``HookedTransformer``).

``export_transformer_lens(run_dir, out_dir)`` writes ``out_dir/config.json`` (keyword arguments of
``HookedTransformerConfig``) and ``out_dir/model.safetensors`` (the parameters of that
``HookedTransformer``'s state dict; its buffers, the causal mask and rotary tables, are rebuilt
by TransformerLens from the config). Writing needs no TransformerLens; loading does::

    cfg = HookedTransformerConfig(**json.load(open("DIR/config.json")))
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(safetensors.torch.load_file("DIR/model.safetensors"),
                                      fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)

(:func:`load_hooked_transformer` does exactly this). Our parameter names already follow
TransformerLens, so the mapping is a renaming (``W_E -> embed.W_E``, ``ln1.weight -> ln1.w``, ...)
plus the position table:

* ``learned`` -> ``positional_embedding_type = "standard"``; ``sinusoidal`` -> ``"standard"`` with
  ``W_pos`` holding the fixed table; ``none`` -> ``"standard"`` with ``W_pos = 0`` (exact);
* ``rotary`` -> ``"rotary"`` over the whole head (``rotary_dim = d_head``, base 10000,
  ``rotary_adjacent_pairs = false``: the rotate-half / GPT-NeoX layout of ``models/attention.py``);
* ``shortformer`` -> ``"shortformer"``: TransformerLens adds ``W_pos`` to ``ln1(x)`` for the query
  and key inputs of every attention layer only (``components/transformer_block.py``), as we do;
* LayerNorm (eps 1e-5) -> ``normalization_type = "LN"``, none -> ``None``; MLP -> ``act_fn = "gelu"``
  (TransformerLens maps it to ``torch.nn.functional.gelu``, the exact erf GELU we use).

What TransformerLens cannot represent raises :class:`ExportError` (one line): every layer kind but
``attn`` (conv layers, smeared keys, linear attention, import-path mixers), Q/K/V convolutions
(``model.attn.qkv_conv``), and LayerNorm without the final LayerNorm (TransformerLens has one
``normalization_type`` for every norm of the model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write, atomic_write_text
from .config import ModelConfig
from .errors import UserError
from .models.registry import layer_list

TL_VERSION = "3.9.0"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: processing flags that leave the weights exactly as exported
NO_PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                 "fold_value_biases": False}


class ExportError(UserError):
    pass


def _import_transformer_lens():
    try:
        import transformer_lens
    except ImportError:
        raise ExportError("TransformerLens is not installed: pip install -e '.[tl]' "
                          f"(transformer-lens=={TL_VERSION})") from None
    return transformer_lens


def check_exportable(m: ModelConfig) -> None:
    """Raise :class:`ExportError` (one line) if TransformerLens cannot represent the model."""
    why = "cannot export to TransformerLens:"
    for i, kind in enumerate(layer_list(m)):
        if kind == "conv":
            raise ExportError(f"{why} layer {i} is a conv layer (TransformerLens has no convolution mixer)")
        if kind == "smeared":
            raise ExportError(f"{why} layer {i} has smeared keys (TransformerLens has no key smearing)")
        if kind != "attn":
            raise ExportError(f"{why} layer {i} is a '{kind}' layer (only softmax attention layers map)")
    if m.mixers["attn"].qkv_conv:
        raise ExportError(f"{why} model.attn.qkv_conv = {m.mixers['attn'].qkv_conv} "
                          "(TransformerLens has no Q/K/V convolution)")
    if m.layernorm and not m.final_ln:
        raise ExportError(f"{why} model.layernorm = true with model.final_ln = false (TransformerLens uses "
                          "one normalization type for every LayerNorm, the final one included)")
    if m.positions not in ("learned", "sinusoidal", "rotary", "shortformer", "none"):
        raise ExportError(f"{why} unknown positions '{m.positions}'")


def transformer_lens_config(m: ModelConfig, name: str = "custom", bos: bool = True) -> dict[str, Any]:
    """Keyword arguments of TransformerLens's ``HookedTransformerConfig`` for model config ``m``."""
    check_exportable(m)
    cfg: dict[str, Any] = {
        "model_name": name,
        "n_layers": len(layer_list(m)),
        "d_model": m.d_model,
        "n_ctx": m.n_ctx,
        "d_head": m.head_dim,
        "n_heads": m.n_heads,
        "d_vocab": m.vocab_size,
        "attn_only": not m.mlp,
        "normalization_type": "LN" if m.layernorm else None,
        "eps": 1e-5,
        "positional_embedding_type": {"rotary": "rotary", "shortformer": "shortformer"}.get(m.positions, "standard"),
        "use_attn_scale": True,
        "attn_scale": math.sqrt(m.head_dim),
        "default_prepend_bos": bos,
        "init_weights": False,  # every parameter is loaded; do not touch the global RNG
    }
    if m.mlp:
        cfg.update(d_mlp=m.mlp_dim, act_fn="gelu")
    if m.positions == "rotary":
        cfg.update(rotary_dim=m.head_dim, rotary_base=10000, rotary_adjacent_pairs=False)
    return cfg


@torch.no_grad()
def transformer_lens_state_dict(model) -> dict[str, torch.Tensor]:
    """The parameters of the ``HookedTransformer`` equal to ``model`` (fp32, contiguous, on CPU)."""
    m: ModelConfig = model.cfg
    check_exportable(m)
    sd: dict[str, torch.Tensor] = {"embed.W_E": model.W_E}
    if m.positions in ("learned", "shortformer", "sinusoidal"):
        sd["pos_embed.W_pos"] = model.W_pos  # a parameter, or the fixed sinusoidal table (a buffer)
    elif m.positions == "none":
        sd["pos_embed.W_pos"] = torch.zeros(m.n_ctx, m.d_model)
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            sd[f"{p}.attn.{k}"] = getattr(block.attn, k)
        lns = [("ln1", block.ln1)] + ([("ln2", block.ln2)] if block.mlp is not None else [])
        if m.layernorm:
            for name, ln in lns:
                sd[f"{p}.{name}.w"], sd[f"{p}.{name}.b"] = ln.weight, ln.bias
        if block.mlp is not None:
            for k in ("W_in", "b_in", "W_out", "b_out"):
                sd[f"{p}.mlp.{k}"] = getattr(block.mlp, k)
    if m.layernorm:
        sd["ln_final.w"], sd["ln_final.b"] = model.ln_final.weight, model.ln_final.bias
    sd["unembed.W_U"], sd["unembed.b_U"] = model.W_U, model.b_U
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in sd.items()}


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"--out {out_dir} exists and is not empty (refusing to overwrite; choose a new directory)")


def export_transformer_lens(run_dir: Path, out_dir: Path, step: int | None = None) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/model.safetensors`` for the run's last checkpoint
    (or the one at ``step``); returns ``out_dir``. Refuses a non-empty ``out_dir``."""
    from safetensors.torch import save

    from .evaluation import load_run

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    cfg, model = load_run(Path(run_dir), step=step)
    config = transformer_lens_config(cfg.model, name=cfg.name, bos=cfg.data.bos)
    tensors = transformer_lens_state_dict(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS_FILE, lambda fh: fh.write(save(tensors)))
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    return out_dir


def _build(config: dict[str, Any], state_dict: dict[str, torch.Tensor], device: str, processing: dict[str, bool]):
    tl = _import_transformer_lens()
    ht = tl.HookedTransformer(tl.HookedTransformerConfig(**{**config, "device": device}))
    params = set(dict(ht.named_parameters()))
    if set(state_dict) != params:
        extra, missing = sorted(set(state_dict) - params), sorted(params - set(state_dict))
        raise ExportError(f"exported weights do not match the HookedTransformer (extra: {extra[:3]}, "
                          f"missing: {missing[:3]})")
    ht.load_and_process_state_dict({k: v.to(device) for k, v in state_dict.items()},
                                   **{**NO_PROCESSING, **processing})
    return ht.eval()


def to_hooked_transformer(model, device: str = "cpu", **processing: bool):
    """An in-memory ``HookedTransformer`` equal to ``model``. ``processing`` are flags of
    ``HookedTransformer.load_and_process_state_dict`` (``fold_ln``, ``center_writing_weights``,
    ``center_unembed``, ``fold_value_biases``), all off by default."""
    return _build(transformer_lens_config(model.cfg), transformer_lens_state_dict(model), device, processing)


def load_hooked_transformer(out_dir: Path, device: str = "cpu", **processing: bool):
    """The ``HookedTransformer`` of an export directory (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    config = json.loads((out_dir / CONFIG_FILE).read_text())
    return _build(config, load_file(str(out_dir / WEIGHTS_FILE)), device, processing)

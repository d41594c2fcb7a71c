"""Typed configuration: dataclasses, TOML loading, validation and ``--set`` overrides.

A config has three sections, ``[model]``, ``[data]`` and ``[train]``, plus an optional ``name``.
Every key is checked: unknown keys, wrong types and inconsistent values raise
:class:`ConfigError` with one readable line (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


class ConfigError(UserError, ValueError):
    """Bad configuration: the message is one line meant for the user."""


POSITIONS = ("learned", "sinusoidal", "rotary", "shortformer", "none")
SCHEDULES = ("cosine", "constant")
PERIOD_MODES = ("batch", "sequence")
LOSS_ON = ("all", "induction")
INIT_SCHEMES = ("gpt2", "torch", "transformer-lens")  # models/init.py
CONV_PADDING = ("causal", "same")  # "same" leaks the future: kept only to demonstrate the guard


@dataclass
class ModelConfig:
    arch: str = "attn-only-2l"
    #: explicit layer list; empty means "the registry's list for ``arch``"
    layers: list[str] = field(default_factory=list)
    vocab_size: int = 256
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 0  # 0 -> d_model // n_heads
    n_ctx: int = 80
    positions: str = "learned"
    layernorm: bool = False
    mlp: bool = False
    d_mlp: int = 0  # 0 -> 4 * d_model
    conv_kernel: int = 5
    #: a conv layer adds to the residual stream (True) or replaces it (False, the original
    #: Conv-Attn: embedding -> conv -> attention -> unembedding)
    conv_residual: bool = True
    conv_padding: str = "causal"
    #: depthwise causal conv of this kernel on Q, K and V inside attention (Primer); 0 = off
    qkv_conv: int = 0
    #: initial value of the smeared-key logit alpha (sigma(alpha) is the weight of k_j itself)
    smear_init: float = 0.0
    #: initialisation scheme: gpt2 (N(0, init_std)), torch (PyTorch layer defaults) or
    #: transformer-lens (N(0, 0.8/sqrt(d_model))); see models/init.py
    init: str = "gpt2"
    #: standard deviation of the ``gpt2`` scheme
    init_std: float = 0.02
    #: make the final LayerNorm (if ``layernorm``) present
    final_ln: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp or 4 * self.d_model


@dataclass
class DataConfig:
    kind: str = "repeat"  # "repeat" (synthetic) or "text"
    period_min: int = 20
    period_max: int = 29
    period_mode: str = "batch"  # draw the period per batch or per sequence
    bos: bool = True
    #: held-out evaluation sequences (their own generator, seed ``train.seed + 1_000_003``)
    eval_sequences: int = 256
    # text data (issue: natural text)
    corpus: str = "wikitext-2"
    data_dir: str = ""
    tokenizer: str = "gpt2"
    bpe_vocab: int = 4096
    max_eval_tokens: int = 0
    #: where tokenised corpora and trained tokenizers are cached ("" -> $INDUCTIONLAB_CACHE or
    #: ~/.cache/inductionlab)
    cache_dir: str = ""


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    #: evaluate every ``eval_every`` steps, plus ``log_evals`` log-spaced early steps
    eval_every: int = 100
    log_evals: int = 10
    #: measure the phase-change curves on the device every ``track_every`` steps and write them to
    #: tracking.jsonl at the evaluations (metrics/tracking.py; repeat data only); 0 = off
    track_every: int = 5
    #: stop as soon as held-out induction accuracy reaches this (0 = never)
    target_accuracy: float = 0.0
    #: which positions the training loss covers: all, or only those a perfect induction
    #: circuit can predict (targets that already occurred one period earlier)
    loss_on: str = "all"
    #: which evaluations also run the full measurement suite (metrics/suite.py) and keep a
    #: checkpoint: "log" (log-spaced over the run, plus the last), "all" or "final"
    full_metrics: str = "log"
    #: number of log-spaced full evaluations when ``full_metrics = "log"``
    full_evals: int = 8
    device: str = "cpu"
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    threads: int = 0  # torch CPU threads; 0 = leave as is
    grad_accum: int = 1
    progress: bool = True
    #: resume points (docs/reliability.md): a checkpoint with the full training state every
    #: ``checkpoint_every`` steps and/or every ``checkpoint_minutes`` minutes (0 = off), into
    #: checkpoints/periodic/, keeping the newest ``keep_last`` of them while the run is going
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    keep_last: int = 2
    #: non-finite training loss: 0 stops the run naming the step; N > 0 skips up to N such steps
    #: (no update) and stops at the next one (reads the loss every step: one host sync per step)
    skip_nonfinite: int = 0


@dataclass
class Config:
    name: str = "run"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


# --------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{key}: {value} is out of range") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return _text(value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, key) for v in value]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported type")  # pragma: no cover
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _text(value: str, key: str) -> str:
    """A config string: it becomes part of config.toml (UTF-8) and of paths, so no NUL and no
    lone surrogate (what undecodable bytes in a command line turn into)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{key}: {value!r} is not valid UTF-8 text") from None
    if "\x00" in value:
        raise ConfigError(f"{key}: {value!r} contains a NUL character")
    return value


def _section_from_dict(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{section}.{key}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config must be a table")
    unknown = set(data) - set(SECTIONS) - {"name", "description"}
    if unknown:
        raise ConfigError(f"unknown config section or key '{sorted(unknown)[0]}' "
                          "(known: name, description, model, data, train)")
    name = data.get("name", "run")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"name: expected a non-empty string without '/', got {name!r}")
    _text(name, "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"description: expected a string, got {description!r}")
    _text(description, "description")
    cfg = Config(
        name=name,
        description=description,
        **{sec: _section_from_dict(cls, data.get(sec, {}), sec) for sec, cls in SECTIONS.items()},
    )
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- overrides
def _parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config dict (before validation)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in ("name", "description"):
            data[key] = text
            continue
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"unknown config key '{key}' (use model.X, data.X or train.X)")
        section, name = parts
        fields_ = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if name not in fields_:
            raise ConfigError(f"unknown config key '{key}' (known in [{section}]: {', '.join(sorted(fields_))})")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        data[section][name] = _parse_value(text)
    return data


# --------------------------------------------------------------------------- validation
#: sanity bounds: larger values are typos (or a damaged config.toml), not experiments; past them the
#: model, a batch or the trainer's schedule would not fit in memory
MAX_PARAMS = 2**31
MAX_CTX = 2**16
MAX_TOKENS = 2**24  # in one training batch, and in the evaluation set
MAX_EVALS = 10**5
MAX_TRACKED = 10**7


def _approx_params(m: ModelConfig, n_layers: int) -> int:
    """An upper estimate of the model's parameter count (every layer counted as attention + MLP + conv)."""
    d, h, e = m.d_model, m.n_heads, m.head_dim
    layer = 4 * h * d * e + 3 * h * e + 3 * h * e * m.qkv_conv + d * (m.conv_kernel + 5)
    if m.mlp:
        layer += 2 * d * m.mlp_dim + m.mlp_dim
    return (2 * d + 1) * m.vocab_size + m.n_ctx * d + n_layers * layer


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    from .models.registry import ARCHITECTURES, LAYER_KINDS  # local: avoid import cycle

    m, d, t = cfg.model, cfg.data, cfg.train
    _check(m.arch in ARCHITECTURES, f"unknown architecture '{m.arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    for kind in m.layers:
        _check(kind in LAYER_KINDS, f"unknown layer kind '{kind}' in model.layers (known: {', '.join(LAYER_KINDS)})")
    _check(m.vocab_size >= 2, f"model.vocab_size must be >= 2, got {m.vocab_size}")
    _check(m.d_model >= 1 and m.n_heads >= 1, "model.d_model and model.n_heads must be positive")
    if not m.d_head:
        _check(m.d_model % m.n_heads == 0,
               f"model.d_model ({m.d_model}) is not divisible by model.n_heads ({m.n_heads}); set model.d_head")
    _check(m.d_head >= 0 and m.d_mlp >= 0, "model.d_head and model.d_mlp must be >= 0")
    _check(m.n_ctx >= 4, f"model.n_ctx must be >= 4, got {m.n_ctx}")
    _check(m.positions in POSITIONS, f"model.positions must be one of {', '.join(POSITIONS)}, got '{m.positions}'")
    if m.positions == "rotary":
        _check(m.head_dim % 2 == 0, f"rotary positions need an even head dimension, got {m.head_dim}")
    _check(m.conv_kernel >= 1, f"model.conv_kernel must be >= 1, got {m.conv_kernel}")
    _check(m.qkv_conv >= 0, f"model.qkv_conv must be >= 0, got {m.qkv_conv}")
    _check(m.conv_padding in CONV_PADDING, f"model.conv_padding must be one of {', '.join(CONV_PADDING)}")
    _check(m.init_std > 0, "model.init_std must be > 0")
    _check(m.init in INIT_SCHEMES, f"model.init must be one of {', '.join(INIT_SCHEMES)}, got '{m.init}'")
    # sanity bounds (a typo or a damaged config.toml): beyond them allocating fails with a traceback
    _check(m.n_ctx <= MAX_CTX, f"model.n_ctx must be <= {MAX_CTX}, got {m.n_ctx}")
    _check(max(m.conv_kernel, m.qkv_conv) <= MAX_CTX, f"model.conv_kernel and model.qkv_conv must be <= {MAX_CTX}")
    n_params = _approx_params(m, len(m.layers or ARCHITECTURES[m.arch][0]))
    _check(n_params <= MAX_PARAMS, f"the model would have about {n_params:.3g} parameters, more than {MAX_PARAMS:.3g} "
                                   "(check model.vocab_size, d_model, n_heads, d_head, d_mlp and layers)")

    _check(d.kind in ("repeat", "text"), f"data.kind must be 'repeat' or 'text', got '{d.kind}'")
    if d.kind == "repeat":
        _check(1 <= d.period_min <= d.period_max,
               f"data.period_min ({d.period_min}) must be >= 1 and <= data.period_max ({d.period_max})")
        usable = m.n_ctx - (1 if d.bos else 0)
        _check(2 * d.period_max <= usable,
               f"data.period_max ({d.period_max}) is longer than the context allows: a period must repeat at "
               f"least once in model.n_ctx={m.n_ctx} tokens{' after BOS' if d.bos else ''} (max {usable // 2})")
        needed = m.vocab_size - (1 if d.bos else 0)
        _check(needed >= 2, "model.vocab_size too small for random tokens")
    if d.kind == "text":
        _check(bool(d.corpus), "data.corpus must name a corpus (wikitext-2, wikitext-2-raw) or a path to .txt data")
        _check(bool(d.tokenizer), "data.tokenizer must be 'gpt2', 'bpe' or a path to a tokenizer.json")
        _check(d.bpe_vocab >= 260, f"data.bpe_vocab must be >= 260 (256 bytes + special tokens), got {d.bpe_vocab}")
        _check(d.max_eval_tokens == 0 or d.max_eval_tokens >= m.n_ctx,
               f"data.max_eval_tokens must be 0 (default bound) or >= model.n_ctx ({m.n_ctx}), got {d.max_eval_tokens}")
    _check(d.period_mode in PERIOD_MODES, f"data.period_mode must be one of {', '.join(PERIOD_MODES)}")
    _check(d.eval_sequences >= 1, "data.eval_sequences must be >= 1")

    _check(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(all(0 <= b < 1 for b in t.betas), f"train.betas must be in [0, 1), got {list(t.betas)}")
    _check(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    _check(t.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{t.schedule}'")
    _check(t.warmup >= 0, "train.warmup must be >= 0")
    _check(0 <= t.min_lr_frac <= 1, "train.min_lr_frac must be in [0, 1]")
    _check(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = off)")
    _check(t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}")
    _check(t.log_evals >= 0, "train.log_evals must be >= 0")
    _check(t.track_every >= 0, f"train.track_every must be >= 0 (0 = off), got {t.track_every}")
    _check(0 <= t.target_accuracy <= 1, "train.target_accuracy must be in [0, 1]")
    _check(t.full_metrics in ("log", "all", "final"), f"train.full_metrics must be log, all or final, got '{t.full_metrics}'")
    _check(t.full_evals >= 1, "train.full_evals must be >= 1")
    _check(t.full_evals <= 100 and t.log_evals <= 1000, "train.full_evals must be <= 100 and train.log_evals <= 1000")
    _check(t.steps // t.eval_every <= MAX_EVALS, f"train.steps / train.eval_every is {t.steps // t.eval_every} "
                                                 f"evaluations, more than {MAX_EVALS}: raise train.eval_every")
    _check(not t.track_every or t.steps // t.track_every <= MAX_TRACKED,
           f"train.steps / train.track_every is more than {MAX_TRACKED} tracked steps: raise train.track_every (0 = off)")
    for what, n in (("train.batch_size", t.batch_size), ("data.eval_sequences", d.eval_sequences)):
        _check(n * m.n_ctx <= MAX_TOKENS, f"{what} x model.n_ctx is {n * m.n_ctx} tokens, more than {MAX_TOKENS}")
    _check(t.threads <= 1024, f"train.threads must be <= 1024, got {t.threads}")
    _check(t.loss_on in LOSS_ON, f"train.loss_on must be one of {', '.join(LOSS_ON)}")
    _check(t.amp in ("none", "bf16", "fp16"), f"train.amp must be none, bf16 or fp16, got '{t.amp}'")
    _check(t.threads >= 0 and t.grad_accum >= 1, "train.threads must be >= 0 and train.grad_accum >= 1")
    _check(re.fullmatch(r"cpu|auto|cuda(:\d+)?", t.device) is not None,
           f"train.device must be cpu, cuda, cuda:N or auto, got '{t.device}'")
    _check(0 <= t.seed < 2**62, f"train.seed must be in [0, 2**62), got {t.seed}")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0 (0 = off), got {t.checkpoint_every}")
    _check(t.checkpoint_minutes >= 0, f"train.checkpoint_minutes must be >= 0 (0 = off), got {t.checkpoint_minutes}")
    _check(t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}")
    _check(t.skip_nonfinite >= 0, f"train.skip_nonfinite must be >= 0 (0 = stop at the first), got {t.skip_nonfinite}")


# --------------------------------------------------------------------------- loading
PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def resolve_source(source: str) -> dict[str, Any]:
    """Raw dict for a preset name or a path to a TOML file."""
    path = Path(source)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a file name too long
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    if source.endswith(".toml") or exists:
        return read_toml(path)
    if source in preset_names():
        return read_toml(PRESET_DIR / f"{source}.toml")
    raise ConfigError(f"unknown preset '{source}' and no such config file (presets: {', '.join(preset_names())})")


def load_config(source: str, overrides: list[str] | None = None) -> Config:
    return config_from_dict(apply_overrides(resolve_source(source), overrides or []))


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dump_toml(cfg: Config) -> str:
    """Write a config back as TOML (only the value types the config uses)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):  # a basic string: control characters escaped (a newline would end it)
            return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
                                                            else c) for c in v) + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        raise TypeError(type(v))  # pragma: no cover

    d = cfg.to_dict()
    lines = [f"name = {fmt(d['name'])}", f"description = {fmt(d['description'])}", ""]
    for sec in SECTIONS:
        lines.append(f"[{sec}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in d[sec].items())
        lines.append("")
    return "\n".join(lines)

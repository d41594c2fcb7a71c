"""Typed configuration: the schema (dataclasses), coercion of raw tables and validation. Reading
presets and TOML files, ``--set`` overrides and writing TOML back are in ``configfile.py``.

A config has three sections, ``[model]``, ``[data]`` and ``[train]``, plus an optional ``name``.
``[model]`` holds one subtable per mixer's settings (``[model.attn]``, ``[model.conv]``, ...: the
mixers own them, models/mixer.py); ``--set model.conv.kernel=7`` reaches into one, and the flat
keys of earlier versions (``model.conv_kernel``) still read as the table keys they became.
Every key is checked: unknown keys, wrong types and inconsistent values raise
:class:`ConfigError` with one readable line (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, UserError  # noqa: F401 (ConfigError is part of this module's API)
from .models.init import SCHEMES as INIT_SCHEMES
from .models.registry import ARCHITECTURES, LEGACY_KEYS, default_settings, mixer_spec
from .registry import TASKS


POSITIONS = ("learned", "sinusoidal", "rotary", "shortformer", "none")
SCHEDULES = ("cosine", "constant")
LOSS_ON = ("all", "induction")


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
    #: initialisation scheme: gpt2 (N(0, init_std)), torch (PyTorch layer defaults) or
    #: transformer-lens (N(0, 0.8/sqrt(d_model))); see models/init.py
    init: str = "gpt2"
    #: standard deviation of the ``gpt2`` scheme
    init_std: float = 0.02
    #: make the final LayerNorm (if ``layernorm``) present
    final_ln: bool = True
    #: the mixers' settings, one ``[model.<name>]`` table each: ``{name: settings dataclass}``
    #: (``mixers["conv"]`` is a ``ConvConfig``, also reachable as ``cfg.conv``). Filled with the
    #: defaults of every built-in mixer and of each import-path mixer in the layer list.
    mixers: dict[str, Any] = field(default_factory=dict, metadata={"subtables": True})

    #: flat keys of earlier versions -> the ``table.key`` they set (read and --set as aliases)
    ALIASES: typing.ClassVar[dict[str, tuple[str, ...]]] = LEGACY_KEYS

    def __post_init__(self) -> None:
        kinds = self.layers if isinstance(self.layers, list) and self.layers else \
            list(ARCHITECTURES.get(self.arch, ([], ""))[0])
        self.mixers = {**default_settings(kinds), **self.mixers}
        for name in self.mixers:
            check(name not in _field_names(ModelConfig),
                   f"a mixer's settings table [model.{name}] has the name of a [model] key")

    def __getattr__(self, name: str) -> Any:
        """``cfg.conv`` -> ``cfg.mixers["conv"]``; old flat names (``cfg.conv_kernel``) read through."""
        mixers = self.__dict__.get("mixers") or {}
        if name in mixers:
            return mixers[name]
        if name in LEGACY_KEYS:
            table, key = LEGACY_KEYS[name][0].split(".")
            if table in mixers:
                return getattr(mixers[table], key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp or 4 * self.d_model


@dataclass
class DataConfig:
    """The keys every task's ``[data]`` section has. ``kind`` names the task (registry.TASKS);
    the task's own config dataclass (a subclass of this one, in its ``tasks/`` file) adds its
    keys and checks them in :meth:`validate`."""

    kind: str = "repeat"
    #: held-out evaluation sequences (their own generator, seed ``train.seed + 1_000_003``)
    eval_sequences: int = 256

    def validate(self, cfg: "Config") -> None:
        """Check this section against the whole config (raise :class:`ConfigError`)."""


def _task(kind: str):
    spec = TASKS.get(kind)
    if spec is None:
        raise ConfigError(f"data.kind must be one of {', '.join(sorted(TASKS))}, got {kind!r}")
    return spec


def default_data() -> DataConfig:
    """The ``[data]`` section of a config that does not name a task: repeated random tokens."""
    return _task("repeat").config()


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
    #: stop as soon as the task's headline metric (induction accuracy for repeated tokens) reaches
    #: this, in its direction (>= when higher is better, <= for a loss); 0 = never
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
    data: DataConfig = field(default_factory=default_data)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, subtables nested (``d["model"]["conv"]["kernel"]``)."""
        d = dataclasses.asdict(self)
        d.update({sec: table_dict(getattr(self, sec)) for sec in SECTIONS})
        return d


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


# --------------------------------------------------------------------------- subtables
# A section may hold subtables ([model.conv]): a field typed as a dataclass is one, and a field
# marked ``metadata={"subtables": True}`` (``ModelConfig.mixers``) holds ``{name: dataclass}``
# whose keys, as the section's ``__post_init__`` fills them with defaults, are the tables it takes.
# A section's ``ALIASES`` maps old flat keys to the ``table.key`` they became.
def _subtables_field(cls: type) -> str | None:
    return next((f.name for f in dataclasses.fields(cls) if f.metadata.get("subtables")), None)


def _field_names(cls: type) -> set[str]:
    """The keys of section ``cls`` (its fields, less the one holding subtables)."""
    return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("subtables")}


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _takes_table(cls: type, name: str) -> bool:
    """Whether ``[section.name]`` may be a subtable of section ``cls`` (checked fully when parsed)."""
    if _subtables_field(cls) is not None:
        return True
    return name in _field_names(cls) and _is_settings(typing.get_type_hints(cls).get(name))


def table_dict(obj: Any) -> dict[str, Any]:
    """A section (dataclass) as a plain dict, subtables nested: ``{"arch": ..., "conv": {"kernel": 5, ...}}``."""
    tables = _subtables_field(type(obj))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == tables:
            out.update({k: table_dict(v) for k, v in value.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = table_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def model_table(data: Any) -> Any:
    """A saved ``[model]`` table (a checkpoint's, maybe in the flat layout of earlier versions) in
    today's layout with defaults filled in, as ``table_dict(cfg.model)`` gives it; ``data``
    itself if it does not parse."""
    try:
        return table_dict(_section_from_dict(ModelConfig, data, "model"))
    except ConfigError:
        return data


def _resolve_aliases(cls: type, table: dict[str, Any], section: str) -> dict[str, Any]:
    """``table`` with the old flat keys of ``cls.ALIASES`` moved to the ``table.key`` they became
    (``conv_kernel = 5`` -> ``[model.conv] kernel = 5``); a key given both ways is an error."""
    aliases = getattr(cls, "ALIASES", {})
    if not any(k in table for k in aliases):
        return table
    table = dict(table)
    for old, paths in aliases.items():
        if old not in table:
            continue
        value = table.pop(old)
        for path in paths:
            sub, key = path.split(".")
            current = table.get(sub, {})
            if not isinstance(current, dict):
                raise ConfigError(f"[{section}.{sub}] must be a table, got {current!r}")
            if key in current:
                raise ConfigError(f"{section}.{old} and {section}.{path} are both set ({section}.{old} is the "
                                  f"old name of {section}.{path}): keep one")
            table[sub] = {**current, key: value}
    return table


# --------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_settings(tp):  # a subtable [section.key]
        return _section_from_dict(tp, value, key)
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
    """Section (or subtable) ``section`` of dataclass ``cls`` from its raw TOML table."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    data = _resolve_aliases(cls, data, section)
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    tables = _subtables_field(cls)
    kwargs, subtables = {}, {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        elif tables is not None:
            subtables[key] = value
        else:
            raise ConfigError(f"unknown config key '{section}.{key}' (known: {', '.join(sorted(names))})")
    obj = cls(**kwargs)
    if tables is not None:
        own = getattr(obj, tables)  # the tables this section takes (for [model]: its mixers'), at their defaults
        for key, value in subtables.items():
            if key not in own:
                raise ConfigError(f"unknown config key '{section}.{key}' (known: {', '.join(sorted(names))}; "
                                  f"tables: {', '.join(own) or 'none'})")
            own[key] = _section_from_dict(type(own[key]), value, f"{section}.{key}")
    return obj


def _data_from_dict(data: Any) -> DataConfig:
    """The ``[data]`` section, parsed by the config class of the task ``kind`` names. Keys of
    another task's section holding that task's default value are dropped (a config.toml written
    before each task owned its section lists every task's keys); other foreign keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"[data] must be a table, got {data!r}")
    kind = data.get("kind", "repeat")
    if not isinstance(kind, str):
        raise ConfigError(f"data.kind: expected a string, got {kind!r}")
    cls = _task(kind).config
    own = {f.name for f in dataclasses.fields(cls)}
    kept = {}
    for key, value in data.items():
        if key not in own:
            other = next((t for t in TASKS.values() if any(f.name == key for f in dataclasses.fields(t.config))), None)
            if other is not None:
                default = next(f for f in dataclasses.fields(other.config) if f.name == key)
                if default.default is not dataclasses.MISSING and value == default.default:
                    continue
                raise ConfigError(f"data.{key} belongs to the {other.name} task, not to data.kind = {kind!r}")
        kept[key] = value
    return _section_from_dict(cls, kept, "data")


def data_keys() -> set[str]:
    """Every ``[data]`` key some registered task knows."""
    return {f.name for t in TASKS.values() for f in dataclasses.fields(t.config)}


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
        **{sec: _section_from_dict(cls, data.get(sec, {}), sec) for sec, cls in SECTIONS.items() if sec != "data"},
        data=_data_from_dict(data.get("data", {})),
    )
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- validation
#: sanity bounds: larger values are typos (or a damaged config.toml), not experiments; past them the
#: model, a batch or the trainer's schedule would not fit in memory
MAX_PARAMS = 2**31
MAX_CTX = 2**16
MAX_TOKENS = 2**24  # in one training batch, and in the evaluation set
MAX_EVALS = 10**5
MAX_TRACKED = 10**7


def _approx_params(m: ModelConfig, n_layers: int) -> int:
    """An upper estimate of the model's parameter count (every layer counted as attention + MLP,
    plus what every mixer's settings add: conv kernels, Q/K/V convs, ...)."""
    d, h, e = m.d_model, m.n_heads, m.head_dim
    layer = 4 * h * d * e + 3 * h * e + 5 * d
    layer += sum(s.approx_params(m) for s in m.mixers.values() if callable(getattr(s, "approx_params", None)))
    if m.mlp:
        layer += 2 * d * m.mlp_dim + m.mlp_dim
    return (2 * d + 1) * m.vocab_size + m.n_ctx * d + n_layers * layer


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond`` (for the sections' ``validate``)."""
    if not cond:
        raise ConfigError(msg)



def validate(cfg: Config) -> None:
    m, d, t = cfg.model, cfg.data, cfg.train
    check(m.arch in ARCHITECTURES, f"unknown architecture '{m.arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    for kind in m.layers:
        mixer_spec(kind)  # unknown, unimportable or not a mixer: one line
    tables = default_settings(m.layers or ARCHITECTURES[m.arch][0])  # the tables these mixers take
    for table, settings in m.mixers.items():
        check(table in tables and type(settings) is type(tables[table]),
               f"model.mixers['{table}'] is not the settings of a mixer in this model (tables: {', '.join(tables)})")
    check(m.vocab_size >= 2, f"model.vocab_size must be >= 2, got {m.vocab_size}")
    check(m.d_model >= 1 and m.n_heads >= 1, "model.d_model and model.n_heads must be positive")
    if not m.d_head:
        check(m.d_model % m.n_heads == 0,
               f"model.d_model ({m.d_model}) is not divisible by model.n_heads ({m.n_heads}); set model.d_head")
    check(m.d_head >= 0 and m.d_mlp >= 0, "model.d_head and model.d_mlp must be >= 0")
    check(m.n_ctx >= 4, f"model.n_ctx must be >= 4, got {m.n_ctx}")
    check(m.positions in POSITIONS, f"model.positions must be one of {', '.join(POSITIONS)}, got '{m.positions}'")
    if m.positions == "rotary":
        check(m.head_dim % 2 == 0, f"rotary positions need an even head dimension, got {m.head_dim}")
    for table, settings in m.mixers.items():  # each mixer checks its own [model.<table>]
        if callable(getattr(settings, "validate", None)):
            settings.validate(f"model.{table}", m)
    check(m.init_std > 0, "model.init_std must be > 0")
    check(m.init in INIT_SCHEMES, f"model.init must be one of {', '.join(INIT_SCHEMES)}, got '{m.init}'")
    # sanity bounds (a typo or a damaged config.toml): beyond them allocating fails with a traceback
    check(m.n_ctx <= MAX_CTX, f"model.n_ctx must be <= {MAX_CTX}, got {m.n_ctx}")
    n_params = _approx_params(m, len(m.layers or ARCHITECTURES[m.arch][0]))
    check(n_params <= MAX_PARAMS, f"the model would have about {n_params:.3g} parameters, more than {MAX_PARAMS:.3g} "
                                   "(check model.vocab_size, d_model, n_heads, d_head, d_mlp and layers)")

    check(d.kind in TASKS, f"data.kind must be one of {', '.join(sorted(TASKS))}, got '{d.kind}'")
    check(isinstance(d, TASKS[d.kind].config), f"[data] is not a {d.kind} section")
    d.validate(cfg)  # the task's own checks
    check(d.eval_sequences >= 1, "data.eval_sequences must be >= 1")

    check(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    check(all(0 <= b < 1 for b in t.betas), f"train.betas must be in [0, 1), got {list(t.betas)}")
    check(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    check(t.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{t.schedule}'")
    check(t.warmup >= 0, "train.warmup must be >= 0")
    check(0 <= t.min_lr_frac <= 1, "train.min_lr_frac must be in [0, 1]")
    check(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = off)")
    check(t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}")
    check(t.log_evals >= 0, "train.log_evals must be >= 0")
    check(t.track_every >= 0, f"train.track_every must be >= 0 (0 = off), got {t.track_every}")
    spec = TASKS[d.kind]
    lo, hi = spec.headline_range
    check(t.target_accuracy >= 0 and (hi is None or t.target_accuracy <= hi),
           f"train.target_accuracy (a target for the {d.kind} task's headline {spec.headline}) must be in "
           f"[0, {hi if hi is not None else 'inf'}], got {t.target_accuracy}")
    check(t.full_metrics in ("log", "all", "final"), f"train.full_metrics must be log, all or final, got '{t.full_metrics}'")
    check(t.full_evals >= 1, "train.full_evals must be >= 1")
    check(t.full_evals <= 100 and t.log_evals <= 1000, "train.full_evals must be <= 100 and train.log_evals <= 1000")
    check(t.steps // t.eval_every <= MAX_EVALS, f"train.steps / train.eval_every is {t.steps // t.eval_every} "
                                                 f"evaluations, more than {MAX_EVALS}: raise train.eval_every")
    check(not t.track_every or t.steps // t.track_every <= MAX_TRACKED,
           f"train.steps / train.track_every is more than {MAX_TRACKED} tracked steps: raise train.track_every (0 = off)")
    for what, n in (("train.batch_size", t.batch_size), ("data.eval_sequences", d.eval_sequences)):
        check(n * m.n_ctx <= MAX_TOKENS, f"{what} x model.n_ctx is {n * m.n_ctx} tokens, more than {MAX_TOKENS}")
    check(t.threads <= 1024, f"train.threads must be <= 1024, got {t.threads}")
    check(t.loss_on in LOSS_ON, f"train.loss_on must be one of {', '.join(LOSS_ON)}")
    check(t.amp in ("none", "bf16", "fp16"), f"train.amp must be none, bf16 or fp16, got '{t.amp}'")
    check(t.threads >= 0 and t.grad_accum >= 1, "train.threads must be >= 0 and train.grad_accum >= 1")
    check(re.fullmatch(r"cpu|auto|cuda(:\d+)?", t.device) is not None,
           f"train.device must be cpu, cuda, cuda:N or auto, got '{t.device}'")
    check(0 <= t.seed < 2**62, f"train.seed must be in [0, 2**62), got {t.seed}")
    check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0 (0 = off), got {t.checkpoint_every}")
    check(t.checkpoint_minutes >= 0, f"train.checkpoint_minutes must be >= 0 (0 = off), got {t.checkpoint_minutes}")
    check(t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}")
    check(t.skip_nonfinite >= 0, f"train.skip_nonfinite must be >= 0 (0 = stop at the first), got {t.skip_nonfinite}")

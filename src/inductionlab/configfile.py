"""Config files: presets and TOML files in, ``--set KEY=VALUE`` overrides, TOML out. The schema
and its validation are in ``config.py``; this module only turns text into the raw tables
``config.config_from_dict`` checks, and a config back into text."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from .config import (
    SECTIONS,
    Config,
    ConfigError,
    _field_names,
    _resolve_aliases,
    _takes_table,
    config_from_dict,
    data_keys,
)


# --------------------------------------------------------------------------- overrides
def _parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key_parts(key: str) -> list[str]:
    """``"model.conv.kernel"`` -> ``["model", "conv", "kernel"]``, read as a TOML dotted key, so a
    quoted part may hold dots (``model."mypkg.mixers:MyMixer".width``)."""
    if "\n" not in key and "\r" not in key:
        try:
            node: Any = tomllib.loads(f"{key} = 0")
        except tomllib.TOMLDecodeError:
            node = None
        parts = []
        while isinstance(node, dict) and len(node) == 1:
            (part, node), = node.items()
            parts.append(part)
        if parts and type(node) is int:
            return parts
    return key.split(".")


def _set_path(table: dict[str, Any], path: list[str], value: Any, section: str) -> None:
    """``table[path[0]][path[1]]... = value``, copying the subtables it passes through."""
    for i, part in enumerate(path[:-1]):
        sub = table.get(part, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"[{section}.{'.'.join(path[:i + 1])}] must be a table")
        table[part] = table = dict(sub)
    table[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config dict (before validation):
    ``model.conv.kernel=7`` sets a subtable's key; an old flat key (``model.conv_kernel=7``) sets
    the key it became. The caller's dict is not changed."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for sec, cls in SECTIONS.items():  # old flat keys of the file first, so that --set overrides them
        if isinstance(data.get(sec), dict):
            data[sec] = _resolve_aliases(cls, data[sec], sec)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in ("name", "description"):
            data[key] = text
            continue
        parts = _key_parts(key)
        if len(parts) < 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"unknown config key '{key}' (use model.X, data.X or train.X)")
        section, cls = parts[0], SECTIONS[parts[0]]
        fields_ = data_keys() if section == "data" else _field_names(cls)
        aliases = getattr(cls, "ALIASES", {})
        paths = [p.split(".") for p in aliases[parts[1]]] if len(parts) == 2 and parts[1] in aliases else [parts[1:]]
        value = _parse_value(text)
        for path in paths:
            if len(path) == 1 and path[0] not in fields_:
                raise ConfigError(f"unknown config key '{key}' (known in [{section}]: {', '.join(sorted(fields_))})")
            if len(path) > 2 or (len(path) == 2 and not _takes_table(cls, path[0])):
                raise ConfigError(f"unknown config key '{key}' (use {section}.X or {section}.TABLE.X)")
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"[{section}] must be a table")
            _set_path(data[section], path, value, section)
    return data


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

    def key(k: str) -> str:  # a bare key, or a quoted one ([model."mypkg.mixers:MyMixer"])
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else fmt(k)

    def table(header: str, items: dict[str, Any]) -> None:  # its keys, then its subtables
        lines.append(f"[{header}]")
        lines.extend(f"{key(k)} = {fmt(v)}" for k, v in items.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in items.items():
            if isinstance(v, dict):
                table(f"{header}.{key(k)}", v)

    d = cfg.to_dict()
    lines = [f"name = {fmt(d['name'])}", f"description = {fmt(d['description'])}", ""]
    for sec in SECTIONS:
        table(sec, d[sec])
    return "\n".join(lines)

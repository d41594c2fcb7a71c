"""Fuzzing: random and mutated configs, ``--set`` strings, CLI flags and corrupted run directories.

Every case either works or fails with ONE clear line: a :class:`ConfigError` / :class:`UserError`
whose message is one non-empty line, or (through the CLI) exit code 2 with exactly one line on
stderr and no traceback. Hypothesis runs derandomized (the same cases on every run, no example
database), so CI is reproducible. Cases per property test (stated in each docstring):

    test_fuzz_config_dicts           200   (mutated preset dicts -> config_from_dict)
    test_fuzz_toml_texts             120   (mutated TOML text and bytes -> load_config)
    test_fuzz_set_overrides          120   (--set strings -> apply_overrides + validation)
    test_fuzz_cli_flags              150   (subcommands, flags, paths -> cli.main, in-process)
    test_fuzz_run_dir_cheap          150   (corrupted run dirs -> phase, compare, export)
    test_fuzz_run_dir_eval            20   (corrupted run dirs -> eval)
    test_fuzz_run_dir_report          16   (corrupted run dirs -> report, animate)
    test_fuzz_resume                  40   (corrupted run and --seeds dirs -> train --resume)
                                     ---
                                     816

No fuzz case trains. ``train`` goes through the real CLI with :func:`inductionlab.train.train`
replaced by a stand-in that only resolves the device and prepares the run directory;
``train --resume`` runs for real up to the first optimizer step, which a stand-in refuses (the
run being resumed has 2 steps, so a complete one only finishes). One tiny real run (2 steps of a
2-layer d_model=8 model, a few seconds) is trained once per module and copied for every
corruption, and one more in a real process (test_process_tiny_training_then_damaged_resume).
The CLI and run-directory properties do not shrink a failure (each case can take a second).
Statistics of what the cases hit: ``pytest tests/test_fuzz.py --hypothesis-show-statistics``.
The regression tests at the bottom pin each bug the fuzzing found.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tomllib
from dataclasses import fields
from itertools import count
from pathlib import Path

import pytest

from hypothesis import HealthCheck, Phase, event, given, settings  # the dev extra installs it
from hypothesis import strategies as st

from inductionlab.config import SECTIONS, Config, ConfigError, config_from_dict
from inductionlab.configfile import PRESET_DIR, apply_overrides, dump_toml, load_config

#: settings shared by every property test (besides max_examples, deadline and derandomize)
COMMON = dict(database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
#: the CLI and run-directory cases take up to seconds each: a failure is reported as drawn, not
#: shrunk (shrinking them takes many minutes); derandomize makes it reproducible anyway
NO_SHRINK = dict(COMMON, phases=(Phase.explicit, Phase.generate))

PRESETS = {p.stem: tomllib.loads(p.read_text()) for p in sorted(PRESET_DIR.glob("*.toml"))}
PRESET_TEXTS = {p.stem: p.read_text() for p in sorted(PRESET_DIR.glob("*.toml"))}
KNOWN_KEYS = {sec: [f.name for f in fields(cls)] for sec, cls in SECTIONS.items()}
ENUM_WORDS = ["attn-only-1l", "attn-only-2l", "attn-attn", "conv-attn", "smeared-1l", "smeared-2l", "attn",
              "conv", "smeared", "learned", "sinusoidal", "rotary", "shortformer", "none", "cosine", "constant",
              "batch", "sequence", "all", "induction", "log", "final", "gpt2", "torch", "transformer-lens",
              "bpe", "causal", "same", "repeat", "text", "wikitext-2", "wikitext-2-raw", "cpu", "cuda",
              "cuda:0", "cuda:7", "auto", "bf16", "fp16", "mps"]
NASTY_TEXT = ["", " ", "x", "a\nb", "a\rb", "line\u2028sep", "tab\there", "nul\x00byte", "\x7f", "\x1b[31mred",
              "é", "日本語", "🙂", "\ufeffbom", "\udcff", "'quote", '"dq', "back\\slash", "/", "a/b", "..", ".",
              "x" * 300, "-", "--", "=", "[", "{", "#"]


def one_line(msg: str) -> None:
    assert msg and msg.strip(), "empty error message"
    assert len(msg.splitlines()) == 1 and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"


# --------------------------------------------------------------------------- value strategies
ints = st.one_of(st.integers(-10, 100), st.integers(-2**70, 2**70),
                 st.sampled_from([0, 1, 2, 3, 4, -1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -2**63, 10**30]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-3, 1e308, -1e308, 5e-324, math.nan, math.inf,
                                    -math.inf, 0.999999, 1.0000001]))
texts = st.one_of(st.sampled_from(ENUM_WORDS), st.sampled_from(NASTY_TEXT), st.text(max_size=12),
                  st.text(st.characters(exclude_categories=()), max_size=6))
scalars = st.one_of(st.booleans(), ints, floats, texts, st.none())
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                      max_leaves=6)
key_names = st.one_of(st.sampled_from([k for ks in KNOWN_KEYS.values() for k in ks]),
                      st.sampled_from(["model", "data", "train", "name", "description", "Model", "modle", "steps",
                                       "d_model ", "", "a.b", "a\nb", "🙂"]),
                      st.text(max_size=8))


def perturb(value):
    """Values near ``value`` (mostly of the same kind), so that many mutants still validate."""
    near: list = []
    if isinstance(value, bool):
        near = [not value, int(value), str(value).lower()]
    elif isinstance(value, int):
        near = [value + 1, value - 1, -value, 0, 2 * value, value * 10**6, value * 2**40, float(value), str(value),
                [value], math.nan, True]
    elif isinstance(value, float):
        near = [value * 2, value / 2, -value, 0.0, math.nan, math.inf, value * 1e300, str(value)]
        near += [int(value)] if math.isfinite(value) else []
    elif isinstance(value, str):
        near = ["", value.upper(), value + "x", value[:-1], value + "\n", value * 50, [value], 0]
    elif isinstance(value, list):
        near = [[], value + value, value[:1], [value], [*value, "x"], [*value, 1.5], tuple(value), {"v": value}]
    elif isinstance(value, dict):
        near = [{}, list(value), 3, {**value, "extra": 1}]
    return st.sampled_from(near) if near else values


SECTION_NAMES = st.sampled_from(["model", "data", "train"])


@st.composite
def mutated_configs(draw):
    """A preset's raw dict with 0-4 mutations: keys dropped, renamed or moved to another section,
    values perturbed or replaced by wild ones (wrong types, huge/negative/NaN numbers, unicode,
    nested tables), sections replaced by non-tables, unknown sections and keys added."""
    d = copy.deepcopy(PRESETS[draw(st.sampled_from(sorted(PRESETS)))])
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["perturb", "perturb", "perturb", "set", "drop", "rename", "move", "nest",
                                   "section", "top", "name", "empty"]))
        sec = draw(SECTION_NAMES)
        table = d.get(sec)
        if not isinstance(table, dict):
            table = None
        if op == "perturb" and table:
            key = draw(st.sampled_from(sorted(table)))
            table[key] = draw(perturb(table[key]))
        elif op == "set":
            if table is None:
                d[sec] = table = {}
            key = draw(st.one_of(st.sampled_from(KNOWN_KEYS[sec]), key_names))
            table[key] = draw(st.one_of(values, st.sampled_from(ENUM_WORDS)))
        elif op == "drop":
            pool = sorted(table) if table and draw(st.booleans()) else sorted(d)
            if pool:
                key = draw(st.sampled_from(pool))
                (table if table and key in table else d).pop(key, None)
        elif op == "rename" and table:
            key = draw(st.sampled_from(sorted(table)))
            table[draw(key_names)] = table.pop(key)
        elif op == "move" and table:
            key = draw(st.sampled_from(sorted(table)))
            other = draw(st.sampled_from(["model", "data", "train", "top"]))
            if other == "top":
                d[key] = table.pop(key)
            elif isinstance(d.get(other), dict):
                d[other][key] = table.pop(key)
        elif op == "nest" and table:
            key = draw(st.sampled_from(sorted(table)))
            table[key] = {draw(key_names): table[key]}
        elif op == "section":
            d[sec] = draw(values)
        elif op == "top":
            d[draw(key_names)] = draw(values)
        elif op == "name":
            d[draw(st.sampled_from(["name", "description"]))] = draw(st.one_of(texts, values))
        elif op == "empty":
            if draw(st.booleans()):
                d = {}
            else:
                d[sec] = {}
    return d


# --------------------------------------------------------------------------- a tiny TOML writer
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are TOML escapes (a lone surrogate makes invalid TOML)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))


def to_toml(d: dict) -> str:
    """TOML text of a raw config dict: top-level keys, then one ``[table]`` per dict value
    (``None`` values are left out: TOML has no null)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in d.items() if v is not None and not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(str(kk))} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- config properties
def check_config_outcome(fn) -> Config | None:
    """``fn()`` returns a Config, or raises ConfigError with one line; anything else fails."""
    try:
        cfg = fn()
    except ConfigError as exc:
        one_line(str(exc))
        event("error: " + " ".join(str(exc).split()[:3]))
        return None
    assert isinstance(cfg, Config)
    event("valid")
    return cfg


def check_valid_config(cfg: Config) -> None:
    """A config that validated can be written as config.toml (UTF-8) and read back unchanged, and
    the trainer's schedule of evaluations can be planned from it (quickly)."""
    from inductionlab.train import eval_steps, full_metric_steps

    text = dump_toml(cfg)
    text.encode("utf-8")
    again = config_from_dict(tomllib.loads(text))
    assert dump_toml(again) == text
    assert len(eval_steps(cfg)) <= cfg.train.steps
    assert cfg.train.steps in full_metric_steps(cfg)


@settings(max_examples=200, deadline=None, derandomize=True, **COMMON)
@given(mutated_configs())
def test_fuzz_config_dicts(raw):
    """200 cases: mutated preset dicts through ``config_from_dict``."""
    cfg = check_config_outcome(lambda: config_from_dict(raw))
    if cfg is not None:
        check_valid_config(cfg)


_uid = count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def fresh(root: Path, name: str = "case") -> Path:
    p = root / f"{name}{next(_uid)}"
    p.mkdir()
    return p


@st.composite
def mutated_toml_bytes(draw):
    """A preset's TOML text (or a mutated dict written as TOML), mutated as text and as bytes:
    slices deleted, snippets inserted, lines duplicated, swapped or truncated, non-UTF-8 bytes."""
    if draw(st.booleans()):
        text = PRESET_TEXTS[draw(st.sampled_from(sorted(PRESET_TEXTS)))]
    else:
        text = to_toml(draw(mutated_configs()))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "insert", "dup", "swap", "truncate", "value"]))
        n = len(text)
        if op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "insert":
            i = draw(st.integers(0, n))
            snippet = draw(st.one_of(st.sampled_from(
                ["[model]\n", "[train]\n", "[[train]]\n", "[model.extra]\nx = 1\n", "= ", '"', "'''", "\\", "\n",
                 "steps = 1e999\n", "steps = 3\n", "x = 1\n", "name = 'a'\n", "\x00", "\ufeff", "\u2028", "#",
                 "inf", "nan", "1979-05-27T07:32:00Z", "{a = 1}", "[1, 2"]), st.text(max_size=8)))
            text = text[:i] + snippet + text[i:]
        elif op in ("dup", "swap", "value"):
            lines = text.splitlines(keepends=True)
            if lines:
                i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
                if op == "dup":
                    lines.insert(j, lines[i])
                elif op == "swap":
                    lines[i], lines[j] = lines[j], lines[i]
                elif "=" in lines[i]:
                    lines[i] = lines[i].split("=", 1)[0] + "= " + draw(st.one_of(
                        st.sampled_from(["", "-1", "0", "1e999", "nan", "-inf", "true", '"x"', "[]", "{}", "0x7f",
                                         "99999999999999999999", "[1, 'a']", '"\\ud800"', "1_000"]),
                        values.map(lambda v: _toml_value(v) if v is not None else ""))) + "\n"
                text = "".join(lines)
        elif op == "truncate" and n:
            text = text[:draw(st.integers(0, n))]
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:  # bytes: invalid UTF-8 somewhere, or cut inside a character
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80",
                                                b"\x00", b"\x80"])) + data[i:]
    return data


@settings(max_examples=120, deadline=None, derandomize=True, **COMMON)
@given(data=mutated_toml_bytes(), overrides=st.lists(st.sampled_from(["train.steps=3", "name=x", "model.d_model=32"]),
                                                     max_size=1))
def test_fuzz_toml_texts(scratch, data, overrides):
    """120 cases: mutated TOML files (text and bytes) through ``load_config``."""
    path = fresh(scratch, "toml") / "config.toml"
    path.write_bytes(data)
    cfg = check_config_outcome(lambda: load_config(str(path), overrides))
    if cfg is not None:
        check_valid_config(cfg)


SET_KEYS = st.one_of(
    st.sampled_from([f"{sec}.{k}" for sec, ks in KNOWN_KEYS.items() for k in ks]),
    st.sampled_from(["name", "description", " train.lr ", "model.", ".x", "model.d_model.x", "MODEL.d_model",
                     "train", "", "model.nope", "data.kind ", "a\nb", "model.d\u2028model"]),
    st.text(max_size=10))
SET_VALUES = st.one_of(
    st.sampled_from(["", "[", "]", "{", "[1,", "1e999", "nan", "-inf", "inf", "0x10", "0o7", "0b1", "1_000", "+1",
                     "true", "True", "'single'", '"unterminated', "1979-05-27", "07:32:00", "[1, 'a']", "{a = 1}",
                     '"\\uD800"', "1\n[x]", "1\nx = 2", "=", "==", "a=b", "-0", "00", "1.", ".5", "3e-3"]),
    st.sampled_from(ENUM_WORDS), st.sampled_from(NASTY_TEXT),
    values.map(lambda v: _toml_value(v) if v is not None else ""),
    st.text(max_size=10))
SET_ITEMS = st.one_of(st.builds(lambda k, v: f"{k}={v}", SET_KEYS, SET_VALUES),
                      st.builds(lambda k, v: f"{k}=={v}", SET_KEYS, SET_VALUES), st.text(max_size=12))


@settings(max_examples=120, deadline=None, derandomize=True, **COMMON)
@given(preset=st.sampled_from(sorted(PRESETS)), overrides=st.lists(SET_ITEMS, min_size=1, max_size=4))
def test_fuzz_set_overrides(preset, overrides):
    """120 cases: random ``--set`` strings through ``apply_overrides`` and validation."""
    raw = copy.deepcopy(PRESETS[preset])
    cfg = check_config_outcome(lambda: config_from_dict(apply_overrides(raw, overrides)))
    if cfg is not None:
        check_valid_config(cfg)
    assert raw == PRESETS[preset]  # the caller's dict is not modified


# --------------------------------------------------------------------------- the CLI, in-process
class _WouldTrain(Exception):
    """Raised by the stand-in for ``train()``: the command reached the point of training."""


def _fake_train(cfg, out=None, progress=None, **kwargs):
    from inductionlab.train import default_run_dir, prepare_run_dir, resolve_device

    assert isinstance(cfg, Config)
    resolve_device(cfg.train.device)
    prepare_run_dir(out if out is not None else default_run_dir(cfg))
    raise _WouldTrain


def run_cli(capsys, argv: list[str]) -> tuple[int | str | None, str, str]:
    from inductionlab.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    except _WouldTrain:
        rc = "trained"
    out, err = capsys.readouterr()
    return rc, out, err


def check_cli_outcome(rc, out: str, err: str, argv=None) -> None:
    """Exit 0 (or the training stand-in was reached), or exit 2 with one stderr line, no traceback."""
    assert "Traceback" not in out + err, (argv, err)
    words = [w if "/" not in w else "PATH" for w in err.split()[2:6]]
    event(f"{argv[0] if argv else '-'}: {rc} {' '.join(words)}")
    if rc in (0, "trained"):
        return
    assert rc == 2, (argv, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("inductionlab: error: ") and lines[0][len("inductionlab: error: "):].strip(), (argv, err)


def _train_tiny(out: Path) -> Path:
    from inductionlab.train import train

    cfg = load_config("induction-2l", [
        "name=tiny", "train.steps=2", "train.eval_every=1", "train.log_evals=0", "train.warmup=0",
        "train.full_metrics=all", "train.track_every=1", "train.batch_size=2", "model.d_model=8", "model.n_heads=2",
        "model.n_ctx=12", "model.vocab_size=16", "data.period_min=2", "data.period_max=4", "data.eval_sequences=2"])
    train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-step run of a tiny 2-layer model: checkpoints at steps 1 and 2."""
    return _train_tiny(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, tiny_run):
    """Paths for the flag fuzzing: files, directories, TOML configs, a symlink loop."""
    root = tmp_path_factory.mktemp("cli")
    (root / "file.txt").write_text("not a directory")
    (root / "empty").mkdir()
    (root / "good.toml").write_text(PRESET_TEXTS["induction-2l"])
    (root / "bad.toml").write_text("broken = [toml\n")
    (root / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (root / "dir.toml").mkdir()
    only_cfg = root / "only_config"
    only_cfg.mkdir()
    shutil.copy(tiny_run / "config.toml", only_cfg / "config.toml")
    holds = root / "holds_run"
    holds.mkdir()
    (holds / "metrics.jsonl").write_text("")
    loop = root / "loop"
    os.symlink(loop, loop)
    return root


def _paths(root: Path, run: Path, cheap: bool):
    pool = [str(root / "missing"), str(root / "file.txt"), str(root / "empty"), str(root / "only_config"),
            str(root / "holds_run"), str(root / "loop"), str(root / ("x" * 300)), str(root / "file.txt" / "sub"),
            "", "-", "--", ".", "/", "é/🙂"]
    if cheap:
        pool.append(str(run))
    return st.sampled_from(pool)


@st.composite
def cli_argvs(draw, root: Path, run: Path):
    sub = draw(st.sampled_from(["train", "train", "train", "eval", "eval", "compare", "phase", "report", "animate",
                                "export", "presets", "frobnicate", "", "--help", "-h", "--version"]))
    argv = [sub] if sub else []
    opt = st.booleans()
    if sub == "train":
        argv.append(draw(st.one_of(
            st.sampled_from(sorted(PRESETS)),
            st.sampled_from(["induction-2", "Induction-2l", "", "no-such-preset", str(root / "good.toml"),
                             str(root / "bad.toml"), str(root / "latin1.toml"), str(root / "dir.toml"),
                             str(root / "missing.toml"), str(root), str(root / "loop"), str(root / ("x" * 300)),
                             "nope.toml", "-", "--set"]))))
        for item in draw(st.lists(SET_ITEMS, max_size=3)):
            argv += ["--set", item]
        if draw(opt):
            argv += ["--out", draw(st.one_of(
                st.just(str(fresh(root, "out"))), st.just(str(root / "new" / f"o{next(_uid)}")),
                _paths(root, run, cheap=False)))]
        if draw(opt):
            argv += ["--seeds", draw(st.one_of(st.sampled_from(
                ["0-4", "0,2", "1", "x", "3-1", "0,0", "-2", "\u0663", "0-99999999999999999", "5-5",
                 "99999999999999999999-100000000000000000000000", "", ",", "1-", "-", "0--1", " 1 , 2 ",
                 "4611686018427387904", "1e3", "0-4,3"]), st.text(max_size=6)))]
        argv += [f for f in ("--quiet", "--no-report") if draw(opt)]
        if draw(st.integers(0, 4)) == 0:
            argv += ["--resume", draw(_paths(root, run, cheap=False))]
    elif sub in ("eval", "animate", "export"):
        argv.append(draw(_paths(root, run, cheap=sub == "export")))
        if sub == "eval":
            if draw(opt):
                argv += ["--checkpoints", draw(st.sampled_from(["last", "all", "first", "", "ALL", "a\nb"]))]
            if draw(opt):
                argv.append("--json")
            if draw(opt):
                argv.append("--ablation")
            if draw(opt):
                argv += ["--sequences", draw(st.sampled_from(["2", "1", "0", "-3", "x", "1e3", "99999999999999999999"]))]
        if sub == "animate" and draw(opt):
            argv += ["-o", draw(st.sampled_from([str(root / "a.gif"), str(root), str(root / "file.txt" / "a.gif"),
                                                 str(root / "a.unknown-ext"), ""]))]
        if sub == "export":
            if draw(st.integers(0, 5)):
                argv += ["--to", draw(st.sampled_from(["transformer-lens", "transformer-lens", "hf", ""]))]
            if draw(st.integers(0, 5)):
                argv += ["--out", draw(st.one_of(st.just(str(root / f"export{next(_uid)}")),
                                                 _paths(root, run, cheap=False)))]
            if draw(opt):
                argv += ["--step", draw(st.sampled_from(["1", "2", "3", "0", "-1", "x", "99999999999999999999"]))]
    elif sub in ("compare", "phase", "report"):
        argv += draw(st.lists(_paths(root, run, cheap=sub != "report"), min_size=0, max_size=3))
        if sub == "phase" and draw(opt):
            argv.append("--json")
        if sub == "report" and draw(opt):
            argv += [draw(st.sampled_from(["-o", "--png"])), draw(st.sampled_from([str(root / "r.html"), str(root), ""]))]
    if draw(st.integers(0, 6)) == 0:  # a stray flag or argument anywhere
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(
            ["--bogus", "-x", "--", "extra", "--json", "--set", "--out", "a\nb", "--set=model.d_model=1", "-"])))
    return argv


@settings(max_examples=150, deadline=None, derandomize=True, **NO_SHRINK)
@given(data=st.data())
def test_fuzz_cli_flags(cli_env, tiny_run, capsys, monkeypatch, data):
    """150 cases: random subcommands, flags and paths through ``inductionlab.cli.main``, in-process
    (``train`` stops where training would begin)."""
    monkeypatch.setattr("inductionlab.train.train", _fake_train)
    monkeypatch.chdir(cli_env)  # default run directories (runs/NAME-TIME) land here
    argv = data.draw(cli_argvs(cli_env, tiny_run))
    rc, out, err = run_cli(capsys, argv)
    check_cli_outcome(rc, out, err, argv)


# --------------------------------------------------------------------------- corrupted run directories
def _ck(run: Path, which: str) -> list[Path]:
    from inductionlab.checkpoint import list_checkpoints

    cks = list_checkpoints(run)
    if not cks:
        return []
    return {"last": cks[-1:], "first": cks[:1], "all": cks}[which]


def _garbage():
    return st.one_of(st.sampled_from([b"", b"\x00", b"garbage", b"\xff\xfe\xfd", b"[]", b"{}", b"null", b"1",
                                      b'{"step": "x"}', b"\x80abc", "caf\xe9".encode("latin-1")]),
                     st.binary(max_size=40))


def _json_garbage():
    return st.one_of(values.map(lambda v: json.dumps(v, allow_nan=True)),
                     st.sampled_from(['[]', '[1, 2]', '"text"', 'null', '{"config": 1}', '{"config": {"model": 5}}',
                                      '{"config": {"model": []}}', '{"config": {"model": {"d_model": "x"}}}',
                                      '{"config": {}}', 'NaN', '{"step": 1}']))


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write(path: Path, text: str) -> None:
    _clear(path)
    path.write_text(text)


def _replace_with(draw, path: Path, how: str) -> None:
    """Replace ``path`` by something broken: garbage bytes, its truncated self, non-UTF-8 bytes,
    a directory, a symlink loop, or nothing."""
    old = path.read_bytes() if path.is_file() else b""
    _clear(path)
    if how == "missing":
        return
    if how == "dir":
        path.mkdir()
        (path / "inner").write_text("x")
    elif how == "loop":
        os.symlink(path, path)
    elif how == "dangling":
        os.symlink(path.parent / "nowhere", path)
    elif how == "truncate":
        path.write_bytes(old[:draw(st.integers(0, max(0, len(old) - 1)))])
    elif how == "non-utf8":
        i = draw(st.integers(0, len(old)))
        path.write_bytes(old[:i] + b"\xff\xc3(" + old[i:])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # garbage
        path.write_bytes(draw(_garbage()))


FILE_DAMAGE = st.sampled_from(["missing", "dir", "loop", "dangling", "truncate", "non-utf8", "empty", "garbage"])


#: the keys the phase-change analysis and the report's curves read from metrics/tracking records
CURVE_KEYS = ["step", "prefix_matching", "previous_token", "induction_loss", "induction_accuracy", "icl_score",
              "train_loss", "full", "loss_by_position"]


def _mutate_jsonl(draw, path: Path) -> None:
    lines = path.read_text().splitlines() if path.is_file() else []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["garbage", "non-dict", "bad-step", "drop", "dup", "swap", "perturb", "curve",
                                   "cut"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            lines = [draw(_json_garbage())]
        elif op == "garbage":
            lines.insert(i, draw(st.sampled_from(["{", "not json", '{"step": 1', "\x00", "[]", "NaN"])))
        elif op == "non-dict":
            lines[i] = draw(_json_garbage())
        elif op == "bad-step":
            try:
                rec = json.loads(lines[i])
            except ValueError:
                rec = {}
            if isinstance(rec, dict):
                rec["step"] = draw(st.one_of(st.sampled_from([None, "2", 1.5, -1, 0, True, [1], 10**30]), ints))
                lines[i] = json.dumps(rec)
        elif op == "drop":
            lines.pop(i)
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op in ("perturb", "curve"):
            try:
                rec = json.loads(lines[i])
            except ValueError:
                continue
            if isinstance(rec, dict) and rec:
                key = draw(st.sampled_from(CURVE_KEYS if op == "curve" else sorted(rec)))
                rec.setdefault(key, None)
                rec[key] = draw(st.one_of(perturb(rec[key]), values))
                lines[i] = json.dumps(rec, allow_nan=True)
        elif op == "cut":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
    path.write_text("\n".join(lines) + ("\n" if draw(st.booleans()) else ""))


def _legacy_sidecar(sidecar: Path, change=None) -> None:
    """Make a sidecar one written before sizes and checksums existed (still accepted), after
    ``change(body)``."""
    try:
        body = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return
    if isinstance(body, dict):
        body.pop("files", None)
        body.pop("checksum", None)
        if change is not None:
            change(body)
        sidecar.write_text(json.dumps(body, allow_nan=True))


def _perturb_sidecar(draw, sidecar: Path) -> None:
    def change(body):
        model = (body.get("config") or {}).get("model")
        if isinstance(model, dict) and model:
            key = draw(st.sampled_from(sorted(model)))
            model[key] = draw(st.one_of(perturb(model[key]), values))
        elif body:
            key = draw(st.sampled_from(sorted(body)))
            body[key] = draw(values)
    _legacy_sidecar(sidecar, change)


def _mutate_weights(draw, path: Path) -> None:
    """Rewrite a safetensors checkpoint with one tensor changed: wrong shape, dtype, name; one
    missing or extra; NaN values; or a header that lies about its length."""
    import torch
    from safetensors.torch import load_file, save_file

    if draw(st.booleans()):  # so that the damaged weights are read, not refused for their checksum
        _legacy_sidecar(path.with_suffix(".json"))
    op = draw(st.sampled_from(["shape", "dtype", "rename", "drop", "extra", "nan", "scalar", "header", "header-json"]))
    if op in ("header", "header-json"):
        data = path.read_bytes()
        if len(data) < 8:
            return
        (n,) = struct.unpack("<Q", data[:8])
        if op == "header":
            path.write_bytes(struct.pack("<Q", draw(st.sampled_from([0, 1, n + 1, n * 2, 2**40, 2**64 - 1]))) + data[8:])
        else:
            header = draw(st.sampled_from([b"[]", b"{", b'{"W_E": 5}', b'{"W_E": {"dtype": "F32", "shape": [1], '
                                                                        b'"data_offsets": [0, 999999]}}']))
            path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])
        return
    try:
        sd = load_file(str(path))
    except Exception:  # noqa: BLE001 - already damaged beyond reading
        return
    if not sd:
        return
    key = draw(st.sampled_from(sorted(sd)))
    t = sd[key]
    if op == "shape":
        sd[key] = torch.zeros(*[s + draw(st.integers(-1, 2)) for s in t.shape], 1) if t.dim() else torch.zeros(2)
    elif op == "dtype":
        sd[key] = t.to(draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.bool, torch.bfloat16])))
    elif op == "rename":
        sd[key + draw(st.sampled_from(["_x", ".weight", ""]))] = sd.pop(key)
    elif op == "drop":
        sd.pop(key)
    elif op == "extra":
        sd["extra.param"] = torch.ones(3)
    elif op == "nan":
        sd[key] = torch.full_like(t, float(draw(st.sampled_from(["nan", "inf", "-inf"]))))
    elif op == "scalar":
        sd[key] = torch.tensor(1.0)
    save_file(sd, str(path))


def _mutate_config_toml(draw, path: Path) -> None:
    """config.toml with a key changed (wrong type, out of range) or the text mutated."""
    raw = tomllib.loads(path.read_text())
    op = draw(st.sampled_from(["invalid", "invalid", "model-change", "drop", "text", "section"]))
    if op == "invalid":
        sec = draw(SECTION_NAMES)
        key = draw(st.sampled_from(sorted(raw[sec])))
        raw[sec][key] = draw(st.sampled_from([-1, 0, "x", [], {}, math.nan, 10**30, True, "🙂"]))
    elif op == "model-change":  # still valid and small, but not what the checkpoints were trained with
        raw["model"].update(draw(st.sampled_from([{"d_model": 16}, {"n_heads": 4}, {"positions": "learned"},
                                                   {"layernorm": False}, {"arch": "attn-only-1l"},
                                                   {"vocab_size": 20}, {"mlp": True}, {"d_head": 2}])))
    elif op == "drop":
        sec = draw(SECTION_NAMES)
        raw[sec].pop(draw(st.sampled_from(sorted(raw[sec]))))
    elif op == "section":
        raw[draw(SECTION_NAMES)] = draw(st.sampled_from([1, "x", [1]]))
    text = to_toml(raw)
    if op == "text":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["[", "\n[model]\n", "= =", '"', "\nsteps = 1\n", "\x00"])) + text[i:]
    path.write_text(text)


#: what a damage hits (repeats weight the draw: damage that ends every command at its first check,
#: the whole run directory or its checkpoints/ gone, is drawn less often than damage inside a file)
TARGETS = ["metrics.jsonl", "tracking.jsonl", "summary.json", "weights", "sidecar", "config.toml"] * 2 + [
    "state", "checkpoints", "run"]
EVAL_TARGETS = ["weights", "sidecar"] * 3 + ["config.toml", "config.toml", "state", "checkpoints", "run"]
REPORT_TARGETS = ["metrics.jsonl", "tracking.jsonl", "summary.json", "weights", "sidecar"] * 2 + [
    "config.toml", "checkpoints", "run"]


@st.composite
def corruptions(draw, targets=TARGETS):
    """A list of (target, how) damages; applied by :func:`corrupt`."""
    return draw(st.lists(st.sampled_from(targets), min_size=1, max_size=draw(st.sampled_from([1, 1, 2, 3]))))


def corrupt(draw, run: Path, damages) -> None:
    for target in damages:
        if not run.is_dir() or run.is_symlink():
            return
        if target == "config.toml":
            if (run / target).is_file() and draw(st.booleans()):
                _mutate_config_toml(draw, run / target)
            else:
                _replace_with(draw, run / target, draw(FILE_DAMAGE))
        elif target in ("metrics.jsonl", "tracking.jsonl"):
            if (run / target).is_file() and draw(st.booleans()):
                _mutate_jsonl(draw, run / target)
            else:
                _replace_with(draw, run / target, draw(FILE_DAMAGE))
        elif target == "summary.json":
            if draw(st.booleans()):
                _write(run / target, draw(_json_garbage()))
            else:
                _replace_with(draw, run / target, draw(FILE_DAMAGE))
        elif target in ("weights", "sidecar", "state"):
            for ck in _ck(run, draw(st.sampled_from(["last", "first", "all"]))):
                path = {"weights": ck, "sidecar": ck.with_suffix(".json"),
                        "state": ck.with_name(ck.name.replace(".safetensors", ".state.pt"))}[target]
                if target == "weights" and path.is_file() and draw(st.booleans()):
                    _mutate_weights(draw, path)
                elif target == "sidecar" and draw(st.booleans()):
                    if draw(st.booleans()):
                        _write(path, draw(_json_garbage()))
                    else:
                        _perturb_sidecar(draw, path)
                elif path.exists() or target != "state":
                    _replace_with(draw, path, draw(FILE_DAMAGE))
        elif target == "checkpoints":
            how = draw(st.sampled_from(["missing", "file", "loop", "odd-names", "empty"]))
            ckdir = run / "checkpoints"
            if how == "odd-names":
                for name in draw(st.lists(st.sampled_from(
                        ["step_abc.safetensors", "step_-1.safetensors", "step_99999999999999999999.safetensors",
                         "step_000003.safetensors", "step_3.json", "step_.safetensors", "x.safetensors"]),
                        min_size=1, max_size=3)):
                    if ckdir.is_dir():
                        (ckdir / name).write_bytes(draw(_garbage()))
            elif how == "empty":
                if ckdir.is_dir() and not ckdir.is_symlink():
                    shutil.rmtree(ckdir)
                    ckdir.mkdir()
            else:
                _replace_with(draw, ckdir, {"missing": "missing", "file": "garbage", "loop": "loop"}[how])
        elif target == "run":
            _replace_with(draw, run, draw(st.sampled_from(["missing", "garbage", "loop", "dir"])))


def damaged_copy(data, scratch: Path, tiny_run: Path, targets=TARGETS) -> Path:
    run = fresh(scratch, "dmg") / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    damages = data.draw(corruptions(targets))
    corrupt(data.draw, run, damages)
    event("damaged: " + ", ".join(sorted(set(damages))))
    return run


@settings(max_examples=150, deadline=None, derandomize=True, **NO_SHRINK)
@given(data=st.data())
def test_fuzz_run_dir_cheap(scratch, tiny_run, capsys, data):
    """150 cases: corrupted copies of a real run through ``phase``, ``compare`` and ``export``."""
    run = damaged_copy(data, scratch, tiny_run)
    sub = data.draw(st.sampled_from(["phase", "phase --json", "compare", "compare2", "export", "export --step 1"]))
    if sub.startswith("phase"):
        argv = [*sub.split(), str(run)]
    elif sub.startswith("compare"):
        argv = ["compare", str(run)] + ([str(tiny_run)] if sub == "compare2" else [])
    else:
        argv = ["export", str(run), "--to", "transformer-lens", "--out", str(fresh(scratch, "exp") / "o"),
                *sub.split()[1:]]
    check_cli_outcome(*run_cli(capsys, argv), argv)


@settings(max_examples=20, deadline=None, derandomize=True, **NO_SHRINK)
@given(data=st.data())
def test_fuzz_run_dir_eval(scratch, tiny_run, capsys, data):
    """20 cases: run directories with a damaged config.toml, checkpoint or sidecar through ``eval``."""
    run = damaged_copy(data, scratch, tiny_run, targets=EVAL_TARGETS)
    argv = ["eval", str(run), *data.draw(st.sampled_from([[], ["--json"], ["--ablation", "--sequences", "2"],
                                                          ["--checkpoints", "all", "--json"]]))]
    check_cli_outcome(*run_cli(capsys, argv), argv)


@settings(max_examples=16, deadline=None, derandomize=True, **NO_SHRINK)
@given(data=st.data())
def test_fuzz_run_dir_report(scratch, tiny_run, capsys, data):
    """16 cases: corrupted run directories through ``report`` and ``animate`` (a report takes
    about a second: the fewest cases of all)."""
    run = damaged_copy(data, scratch, tiny_run, targets=REPORT_TARGETS)
    out = fresh(scratch, "rep")
    argv = data.draw(st.sampled_from([["animate", str(run), "-o", str(out / "a.gif")], ["report", str(run)],
                                      ["report", str(run), "-o", str(out / "r.html")], ["animate", str(run)]]))
    check_cli_outcome(*run_cli(capsys, argv), argv)


# --------------------------------------------------------------------------- train --resume
class _WouldStep(Exception):
    """Raised by the stand-in for the optimizer step: a resumed run would train on from here."""


def _no_step(*args, **kwargs):
    raise _WouldStep


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory, tiny_run) -> Path:
    """A --seeds output directory of one finished seed (seed_0 is the tiny run) and its plan."""
    from inductionlab.runstate import write_seed_plan

    out = tmp_path_factory.mktemp("seeds") / "multi"
    shutil.copytree(tiny_run, out / "seed_0", symlinks=True)
    write_seed_plan(out, load_config(str(tiny_run / "config.toml")), [0])
    return out


RESUME_SETS = [[], [], ["--set", "train.progress=false"], ["--set", "train.checkpoint_every=1"], ["--set", "name=x"],
               ["--set", "train.lr=0.5"], ["--set", "model.d_model=16"], ["--set", "train.steps=x"],
               ["--set", "nope=1"], ["--seeds", "0"], ["--seeds", "0-1"], ["--seeds", "x"], ["--out", "o"],
               ["induction-2l"]]


@settings(max_examples=40, deadline=None, derandomize=True, **NO_SHRINK)
@given(data=st.data())
def test_fuzz_resume(scratch, tiny_run, seeds_dir, capsys, monkeypatch, data):
    """40 cases: ``train --resume`` of corrupted copies of a run (mostly unfinished: summary.json
    removed) and of a --seeds output directory, with and without ``--set``. No optimizer step runs:
    a stand-in stops where training would go on."""
    monkeypatch.setattr("inductionlab.train._optimizer_step", _no_step)
    kind = data.draw(st.sampled_from(["unfinished", "unfinished", "finished", "seeds"]))
    if kind != "seeds":
        run = damaged_copy(data, scratch, tiny_run)
        if kind == "unfinished":
            _clear(run / "summary.json")  # resume it
        elif run.is_dir() and data.draw(st.booleans()):  # finished, but its summary damaged
            if data.draw(st.booleans()):
                _write(run / "summary.json", data.draw(_json_garbage()))
            else:
                _replace_with(data.draw, run / "summary.json", data.draw(FILE_DAMAGE))
    else:  # a --seeds directory: its plan or its seed damaged
        root = fresh(scratch, "seeds") / "multi"
        shutil.copytree(seeds_dir, root, symlinks=True)
        if data.draw(st.booleans()):
            _replace_with(data.draw, root / "seeds.json", data.draw(FILE_DAMAGE))
        if data.draw(st.booleans()):
            corrupt(data.draw, root / "seed_0", data.draw(corruptions(REPORT_TARGETS)))
        run = root
    argv = ["train", "--resume", str(run), "--quiet", "--no-report", *data.draw(st.sampled_from(RESUME_SETS))]
    try:
        rc, out, err = run_cli(capsys, argv)
    except _WouldStep:
        rc, (out, err) = "trained", capsys.readouterr()
    check_cli_outcome(rc, out, err, argv)


# --------------------------------------------------------------------------- regressions
# One regular test per bug the fuzzing found (before the fix: a traceback, a hang, a message of
# several lines, or a config.toml that could not be read back).
def cli_one_line(capsys, argv, fragment="", rc_expected=2):
    rc, out, err = run_cli(capsys, argv)
    assert rc == rc_expected, (rc, err)
    if rc_expected == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err
    return out, err


def test_message_quoting_a_line_break_stays_one_line(capsys):
    """config.py/errors.py: a user's key or value with a line break (``\\n``, ``\\x1e``, U+2028)
    was quoted raw, so the error came out on several lines."""
    for raw in ({"model": {"\x1e": 1}}, {"model": {"arch": "a\nb"}}, {"train": {"device": "cpu\u2028"}}):
        with pytest.raises(ConfigError) as exc:
            config_from_dict(raw)
        one_line(str(exc.value))
    with pytest.raises(ConfigError) as exc:
        load_config("induction-2l", ["model.d\nmodel=1"])
    one_line(str(exc.value))
    cli_one_line(capsys, ["train", "induction-2l", "--set", "model.arch=a\nb"], "unknown architecture 'a\\nb'")
    cli_one_line(capsys, ["eval", "x", "a\nb"], "unrecognized arguments: a\\nb")  # argparse's own message
    cli_one_line(capsys, ["train", "induction-2l", "--seeds", "1\n2"], "--seeds")  # a CLIError


def test_config_toml_that_is_not_utf8(tmp_path):
    """config.py read_toml: invalid UTF-8 raised UnicodeDecodeError (a traceback)."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))


def test_config_strings_with_control_characters_round_trip(tmp_path):
    """config.py dump_toml: a newline (or other control character) in a string was written raw,
    so the run's config.toml could not be read back."""
    text = 'first\nsecond\r\t"quoted" back\\slash \x1b[0m \x7f \u2028 é'
    cfg = load_config("induction-2l", [f"name={text}", f"description={text}"])
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    assert load_config(str(path)) == cfg


def test_config_strings_must_be_utf8_without_nul():
    """config.py: a lone surrogate (what undecodable bytes on a command line become) passed
    validation and failed writing config.toml (UnicodeEncodeError) after the run directory was
    made; a NUL passed and failed as "embedded null byte" (ValueError) in a path."""
    for override, fragment in (("name=x\udcff", "not valid UTF-8"), ("data.data_dir=a\x00b", "NUL"),
                               ("description=\ud800", "not valid UTF-8"), ('model.layers=["attn\\u0000"]', "NUL")):
        with pytest.raises(ConfigError, match=fragment):  # data_dir is a key of the text task's section
            load_config("wikitext-conv-attn-cpu" if "data_dir" in override else "induction-2l", [override])


def test_numbers_out_of_range():
    """config.py: an integer beyond the float range in a float key raised OverflowError; inf and
    nan passed validation where a range check did not catch them (train.lr = inf, init_std)."""
    for override in ("train.lr=" + "9" * 400, "train.lr=inf", "model.init_std=inf", "model.smear_init=nan",
                     "train.checkpoint_minutes=inf", "train.betas=[0.9, inf]"):
        with pytest.raises(ConfigError) as exc:
            load_config("induction-2l", [override])
        one_line(str(exc.value))


@pytest.mark.parametrize("override", [
    "model.d_model=1000000000", "model.vocab_size=4611686018427387904", "model.n_ctx=1048576",
    "model.d_head=100000000", "model.conv_kernel=4611686018427387904",
    "train.batch_size=1099511627776", "data.eval_sequences=1099511627776", "train.log_evals=4611686018427387904",
    "train.full_evals=1000000000", "train.steps=4611686018427387904", "train.threads=1099511627776",
])
def test_sizes_beyond_memory_are_config_errors(override):
    """config.py validate: sizes no machine can allocate passed validation, then failed with a
    traceback (RuntimeError/MemoryError/OverflowError building the model, a batch or the evaluation
    schedule) or hung (log_evals/full_evals loops, steps/eval_every evaluations)."""
    with pytest.raises(ConfigError) as exc:
        load_config("induction-2l", [override, "train.track_every=0"] if "steps" in override else [override])
    one_line(str(exc.value))


def test_bounds_leave_real_configs_alone():
    for name in PRESETS:
        load_config(name)
    load_config("induction-2l", ["model.d_model=4096", "model.vocab_size=50257", "model.n_ctx=2048",
                                 "train.batch_size=64", "train.steps=1000000", "train.eval_every=100"])


def test_huge_seed_ranges(capsys):
    """cli.py parse_seeds: a huge --seeds range raised MemoryError or OverflowError."""
    for seeds in ("0-99999999999999999", "99999999999999999999-100000000000000000000000"):
        cli_one_line(capsys, ["train", "induction-2l", "--seeds", seeds], "--seeds")


def test_no_command_is_one_error_line(capsys):
    """cli.py main: no command printed the help and exited 2 without an error line."""
    out, err = cli_one_line(capsys, [], "a command is required")
    assert "usage" in out


def test_file_name_too_long_is_one_line(capsys, monkeypatch, tmp_path):
    """cli.py: Path.exists()/is_dir() raise OSError (ENAMETOOLONG) rather than returning False,
    so a too-long path was a traceback in every command."""
    monkeypatch.setattr("inductionlab.train._run", lambda *a, **k: pytest.fail("would train"))
    monkeypatch.chdir(tmp_path)
    long = str(tmp_path / ("x" * 300))
    for argv in (["eval", long], ["compare", long], ["phase", long], ["animate", long], ["report", long],
                 ["export", long, "--to", "transformer-lens", "--out", long], ["train", long],
                 ["train", "--resume", long], ["train", "induction-2l", "--out", long]):
        cli_one_line(capsys, argv, "too long")


def test_export_out_that_cannot_be_made(capsys, tiny_run, tmp_path):
    """export: --out under a file (mkdir fails) was a NotADirectoryError/FileNotFoundError traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cli_one_line(capsys, ["export", str(tiny_run), "--to", "transformer-lens", "--out", str(blocker / "sub")])


def test_animate_output_without_image_format(capsys, tiny_run, tmp_path):
    """report/animate.py: -o naming a directory or a file without a known image extension was a
    ValueError traceback from PIL."""
    cli_one_line(capsys, ["animate", str(tiny_run), "-o", str(tmp_path)], "cannot write")
    cli_one_line(capsys, ["animate", str(tiny_run), "-o", str(tmp_path / "a.nope")], "cannot write")


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_sidecar_whose_model_is_not_a_table(capsys, tiny_run, tmp_path):
    """evaluation.py load_model: a sidecar with ``config.model`` not a table was an AttributeError."""
    run = _copy_run(tiny_run, tmp_path)
    for ck in (run / "checkpoints").glob("step_*.json"):
        _write(ck, json.dumps({"step": 1, "config": {"model": []}}))
    cli_one_line(capsys, ["eval", str(run)], "unreadable")


def test_report_with_a_damaged_summary(capsys, tiny_run, tmp_path):
    """report/runs.py, report/html.py: a summary.json holding a list, non-UTF-8 bytes, or a head
    score that is not a number was a traceback; the report is written with a note instead."""
    from inductionlab.report.runs import load_run_data

    run = _copy_run(tiny_run, tmp_path)
    for damage in (b"[]", b"\xff\xfe"):
        (run / "summary.json").write_bytes(damage)
        data = load_run_data(run)
        assert data.summary == {} and any("summary.json" in n for n in data.notes)
    (run / "summary.json").write_text('{"best_induction_head": {"name": "L1H0", "score": "x"}}')
    cli_one_line(capsys, ["report", str(run), "-o", str(tmp_path / "r.html")], rc_expected=0)
    assert "L1H0" in (tmp_path / "r.html").read_text()


def test_compare_with_damaged_config_and_summary(capsys, tiny_run, tmp_path):
    """compare.py: a config.toml section that is not a table (AttributeError), and a summary whose
    name is not a string or whose steps are not an integer (TypeError/ValueError in the table)."""
    run = _copy_run(tiny_run, tmp_path)
    (run / "summary.json").write_text(json.dumps({"name": 5, "steps": 1.5, "seconds": "x"}))
    out, _ = cli_one_line(capsys, ["compare", str(run), str(tiny_run)], rc_expected=0)
    assert "1.5" in out
    (run / "config.toml").write_text('data = [1]\nmodel = "x"\n')
    cli_one_line(capsys, ["compare", str(run)], rc_expected=0)


def test_phase_with_a_curve_that_is_not_a_table(capsys, tiny_run, tmp_path):
    """metrics/seeds.py run_phase: a record whose prefix_matching is not a table was an AttributeError."""
    run = _copy_run(tiny_run, tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r["prefix_matching"] = "x"
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cli_one_line(capsys, ["phase", str(run)], "cannot read the curves")


def test_ablation_sequences_beyond_memory(capsys, tiny_run):
    """evaluation.py: ``eval --ablation --sequences 10**12`` tried to allocate them."""
    cli_one_line(capsys, ["eval", str(tiny_run), "--ablation", "--sequences", str(10**12)], "--sequences")


def test_resume_a_finished_run_with_a_damaged_summary(capsys, tiny_run, tmp_path):
    """cli.py train --resume: a finished run whose summary.json is garbage or not an object was a
    JSONDecodeError/AttributeError traceback."""
    run = _copy_run(tiny_run, tmp_path)
    for damage, fragment in (("garbage", "cannot read"), ("[]", "not a JSON object")):
        (run / "summary.json").write_text(damage)
        cli_one_line(capsys, ["train", "--resume", str(run)], fragment)


def test_resume_seeds_with_a_damaged_finished_seed(capsys, seeds_dir, tmp_path):
    """metrics/seeds.py summarize_seeds: resuming a --seeds directory whose finished seed lost its
    metrics.jsonl (or holds garbage in it) was a FileNotFoundError/JSONDecodeError traceback."""
    for i, damage in enumerate((None, "{not json\n", '{"step": 1}\n"x"\n')):
        out = tmp_path / f"multi{i}"
        shutil.copytree(seeds_dir, out)
        metrics = out / "seed_0" / "metrics.jsonl"
        if damage is None:
            metrics.unlink()
        else:
            metrics.write_text(damage)
        cli_one_line(capsys, ["train", "--resume", str(out), "--no-report"], "cannot summarise")


# --------------------------------------------------------------------------- real processes
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli_process(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inductionlab", *args], capture_output=True, timeout=300,
                          cwd=cwd, env=ENV)


def assert_process_one_line(r, fragment=""):
    err = r.stderr.decode("utf-8", "backslashreplace")
    assert r.returncode == 2, err
    assert b"Traceback" not in r.stdout + r.stderr
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inductionlab: error: ") and fragment in lines[0], err


def test_process_undecodable_argument_bytes(tmp_path):
    """A real process: bytes that are not UTF-8 on the command line (a lone surrogate in Python)
    and a newline in a value give one line on stderr, before any run directory exists."""
    r = cli_process(b"train", b"induction-2l", b"--set", b"name=caf\xe9", b"--set", b"model.arch=a\nb",
                    b"--out", os.fsencode(tmp_path / "o"))
    assert_process_one_line(r, "not valid UTF-8")
    assert not (tmp_path / "o").exists()


def test_process_damaged_checkpoint_and_log(tmp_path, tiny_run):
    """A real process: eval of a truncated checkpoint (legacy sidecar, so it is read) and phase
    of a tracking.jsonl with a line that is not JSON."""
    run = _copy_run(tiny_run, tmp_path)
    for ck in (run / "checkpoints").glob("step_*.safetensors"):
        _legacy_sidecar(ck.with_suffix(".json"))
        ck.write_bytes(ck.read_bytes()[:100])
    (run / "tracking.jsonl").write_text('{"step": 1}\n{not json\n')
    assert_process_one_line(cli_process("eval", str(run)), "cannot read checkpoint")
    assert_process_one_line(cli_process("phase", str(run)), "tracking.jsonl")


def test_process_tiny_training_then_damaged_resume(tmp_path):
    """A real process trains a tiny model for one step (the only real training in this file besides
    the fixture's); resuming it after its config.toml was damaged is one line."""
    out = tmp_path / "run"
    r = cli_process("train", "induction-2l", "--out", str(out), "--quiet", "--no-report",
                    "--set", "train.steps=1", "--set", "model.d_model=8", "--set", "model.n_heads=2",
                    "--set", "model.n_ctx=12", "--set", "model.vocab_size=16", "--set", "data.period_min=2",
                    "--set", "data.period_max=4", "--set", "data.eval_sequences=2", "--set", "train.batch_size=2")
    assert r.returncode == 0, r.stderr.decode()
    (out / "summary.json").unlink()
    (out / "config.toml").write_bytes(b"[model\n\xff")
    assert_process_one_line(cli_process("train", "--resume", str(out), "--quiet"))

"""Tokenizers (``data.tokenizer``): GPT-2's (local files or the hub), a byte-level BPE trained on
the training split (cached on disk), or a ``tokenizer.json`` path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..checkpoint import atomic_write
from . import corpus as _corpus  # _corpus.search_bases: the one place that says where data lies
from .corpus import Corpus, DataError, _note, _searched_text, cache_root

EOT = "<|endoftext|>"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError("natural-text runs need the 'tokenizers' package: pip install tokenizers") from None
    return tokenizers


def _from_json(path: Path):
    tk = _tokenizers()
    try:
        return tk.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise DataError(f"cannot load tokenizer {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _from_vocab_merges(vocab: Path, merges: Path):
    tk = _tokenizers()
    try:
        model = tk.models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot load tokenizer {vocab} + {merges}: {exc}") from None
    tok = tk.Tokenizer(model)
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def _tokenizer_from_dir(d: Path):
    if (d / "tokenizer.json").is_file():
        return _from_json(d / "tokenizer.json")
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        return _from_vocab_merges(d / "vocab.json", d / "merges.txt")
    return None


def load_gpt2_tokenizer(data_dir: str = ""):
    for base in _corpus.search_bases(data_dir):
        for d in (base / "gpt2-tokenizer", base / "gpt2", base):
            tok = _tokenizer_from_dir(d) if d.is_dir() else None
            if tok is not None:
                return tok
    if os.environ.get("HF_HUB_OFFLINE") != "1" and os.environ.get("INDUCTIONLAB_OFFLINE") != "1":
        tk = _tokenizers()
        try:
            return tk.Tokenizer.from_pretrained("gpt2")
        except Exception as exc:  # noqa: BLE001 - hub not reachable
            _note(f"could not fetch the gpt2 tokenizer from the hub ({type(exc).__name__})")
    raise DataError(f"GPT-2 tokenizer not found: looked for gpt2-tokenizer/tokenizer.json (or vocab.json + "
                    f"merges.txt) in {_searched_text(data_dir)}, then the hub; set data.data_dir, or "
                    f"data.tokenizer to a tokenizer.json path, or data.tokenizer = \"bpe\" to train one")


def train_bpe(documents: list[str], vocab_size: int):
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def load_tokenizer(spec: str, corpus: Corpus, bpe_vocab: int, data_dir: str = "", cache_dir: str = ""):
    """A ``tokenizers.Tokenizer`` for ``data.tokenizer`` (a trained BPE is cached on disk)."""
    if spec == "gpt2":
        tok = load_gpt2_tokenizer(data_dir)
    elif spec == "bpe":
        path = cache_root(cache_dir) / "bpe" / f"{corpus.digest[:16]}-{bpe_vocab}.json"
        if path.is_file():
            tok = _from_json(path)
        else:
            tok = train_bpe(corpus.splits["train"], bpe_vocab)
            try:
                atomic_write(path, lambda fh: fh.write(tok.to_str().encode()))
            except OSError as exc:
                _note(f"cannot cache the trained tokenizer in {path.parent}: {exc.strerror or exc}")
    else:
        p = Path(spec).expanduser()
        if p.is_dir():
            tok = _tokenizer_from_dir(p)
            if tok is None:
                raise DataError(f"data.tokenizer: {p} holds neither tokenizer.json nor vocab.json + merges.txt")
        elif p.is_file():
            tok = _from_json(p)
        else:
            raise DataError(f"data.tokenizer must be 'gpt2', 'bpe' or a path to a tokenizer.json; {spec!r} does not exist")
    if tok.token_to_id(EOT) is None:
        tok.add_special_tokens([EOT])
    return tok


def tokenizer_digest(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()

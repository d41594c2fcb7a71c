"""Token ids of a corpus, cached as ``.npy`` files (memory-mapped on load) keyed by the corpus and
tokenizer hashes, every file written atomically; one prepared dataset (:class:`TextData`);
packing into fixed-length sequences; unigram baselines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write
from .corpus import CACHE_VERSION, SPLITS, Corpus, _note, cache_root, load_corpus
from .tokenizer import EOT, load_tokenizer, tokenizer_digest

DEFAULT_MAX_EVAL_TOKENS = 1 << 18  # data.max_eval_tokens = 0 -> at most this many validation tokens


# --------------------------------------------------------------------------- tokenising + cache
def _encode_documents(tok, documents: list[str], eot: int) -> np.ndarray:
    """Token ids of ``documents``, each followed by the end-of-text token."""
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    parts = []
    chunk = 256
    for i in range(0, len(documents), chunk):
        for enc in tok.encode_batch(documents[i:i + chunk], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenize_corpus(corpus: Corpus, tok, cache_dir: str = "") -> tuple[dict[str, np.ndarray], Path]:
    """``{split: ids}`` (memory-mapped when cached) and the cache folder used."""
    key = f"{corpus.digest[:16]}-{tokenizer_digest(tok)[:16]}-{CACHE_VERSION}"
    folder = cache_root(cache_dir) / "tokens" / key
    eot = tok.token_to_id(EOT)
    out = {}
    for split in SPLITS:
        path = folder / f"{split}.npy"
        arr = None
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                arr = None  # damaged cache entry: rebuild it
        if arr is None:
            ids = _encode_documents(tok, corpus.splits[split], eot)
            try:
                atomic_write(path, lambda fh: np.save(fh, ids))
                arr = np.load(path, mmap_mode="r")
            except OSError as exc:
                _note(f"cannot write the token cache {folder}: {exc.strerror or exc}")
                arr = ids
        out[split] = arr
    return out, folder


# --------------------------------------------------------------------------- one prepared dataset
@dataclass
class TextData:
    corpus: Corpus
    tokenizer: Any
    ids: dict[str, np.ndarray]
    cache: Path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eot(self) -> int:
        return self.tokenizer.token_to_id(EOT)


def prepare_text(cfg) -> TextData:
    """Corpus, tokenizer and token ids for ``cfg.data`` (the tokenizer and the token arrays come
    from the on-disk cache after the first call)."""
    d = cfg.data
    corpus = load_corpus(d.corpus, d.data_dir)
    tok = load_tokenizer(d.tokenizer, corpus, d.bpe_vocab, d.data_dir, d.cache_dir)
    ids, folder = tokenize_corpus(corpus, tok, d.cache_dir)
    return TextData(corpus, tok, ids, folder)


def resolve_text_vocab(cfg, data: TextData | None = None) -> int:
    """Set ``cfg.model.vocab_size`` to the tokenizer's vocabulary and return it (``data``: an
    already prepared :class:`TextData`, else it is prepared). The training loop does not call
    this on the user's config: ``tasks.prepare`` returns a copy with the vocabulary set."""
    if cfg.data.kind != "text":
        return cfg.model.vocab_size
    data = data or prepare_text(cfg)
    cfg.model.vocab_size = data.vocab_size
    return data.vocab_size


def pack(ids: np.ndarray, n_ctx: int) -> torch.Tensor:
    """Cut a token stream into ``[n, n_ctx]`` sequences (the remainder is dropped; no padding)."""
    n = len(ids) // n_ctx
    return torch.from_numpy(np.asarray(ids[: n * n_ctx], dtype=np.int64)).view(n, n_ctx)


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the token frequency distribution of ``ids``."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> float:
    """Validation loss (nats) of the best context-free model: add-one smoothed train unigram."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val_ids, dtype=np.int64)].mean())

"""Natural text: WikiText-2 (or local ``.txt`` files), BPE tokenisation with an on-disk cache,
packing into fixed-length sequences, and the :class:`TextTask` the training loop drives.

Where data comes from (first hit wins; see docs/text.md):

* ``data.corpus = "wikitext-2"`` (alias ``wikitext-2-v1``, the tokenised variant with ``<unk>``)
  or ``"wikitext-2-raw"`` (alias ``wikitext-2-raw-v1``): a folder holding
  ``wiki.{train,valid,test}.{tokens,raw}`` searched in ``data.data_dir``, ``$INDUCTIONLAB_DATA``,
  ``<repo>/../shared/data``, ``./shared/data``, ``../shared/data`` (each base itself and its
  ``wikitext-2-v1/`` or ``wikitext-2-raw-v1/`` subfolder); then the Hugging Face hub through
  the optional ``datasets`` library; for the raw variant, finally the local *tokenised* variant
  (the offline copy lacks ``wiki.train.raw``), with a printed note.
* ``data.corpus = PATH``: a ``.txt`` file or a folder of ``.txt`` files. Each file is one
  document. Files whose names hold the word ``train`` or one of ``valid``/``val``/``validation``/
  ``dev`` (whole words of the file stem, e.g. ``my_train.txt``, ``dev-valid.txt``; a name with
  both, or neither, is left out) form the splits; with no such files the last 10% of the
  documents (at least one) are the validation split.

Tokenisers (``data.tokenizer``): ``"gpt2"`` (a local ``gpt2-tokenizer/`` folder with
``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` in the same search bases, else the hub),
``"bpe"`` (a byte-level BPE with ``data.bpe_vocab`` tokens trained on the training split), or a
path to a ``tokenizer.json`` file or a folder holding one.

Tokenised splits are cached as ``.npy`` files (memory-mapped on load) under
``data.cache_dir`` / ``$INDUCTIONLAB_CACHE`` / ``~/.cache/inductionlab``, keyed by a hash of the
corpus text and a hash of the tokenizer; every cache file is written to a temporary name and
renamed.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..data.synthetic import EVAL_SEED_OFFSET
from ..errors import UserError
from ..metrics.evaluate import head_record
from ..metrics.heads import best_head, prefix_matching_score, previous_token_score
from ..metrics.icl import icl_indices
from ..metrics.induction import token_correct, token_losses

EOT = "<|endoftext|>"
DEFAULT_MAX_EVAL_TOKENS = 1 << 18  # data.max_eval_tokens = 0 -> at most this many validation tokens
CACHE_VERSION = "v1"

WIKITEXT = {  # corpus name -> (hub config, file suffix)
    "wikitext-2": ("wikitext-2-v1", "tokens"),
    "wikitext-2-v1": ("wikitext-2-v1", "tokens"),
    "wikitext-2-raw": ("wikitext-2-raw-v1", "raw"),
    "wikitext-2-raw-v1": ("wikitext-2-raw-v1", "raw"),
}
SPLITS = ("train", "valid")
HUB_SPLIT = {"train": "train", "valid": "validation"}


class DataError(UserError):
    """Text data or tokenizer missing, unreadable or unusable; one line for the user."""


def _note(msg: str) -> None:
    sys.stderr.write(f"inductionlab: note: {msg}\n")


# --------------------------------------------------------------------------- locations
def search_bases(data_dir: str = "") -> list[Path]:
    """Folders searched for local data, in order (duplicates and missing folders dropped)."""
    cands: list[Path] = []
    if data_dir:
        cands.append(Path(data_dir).expanduser())
    if os.environ.get("INDUCTIONLAB_DATA"):
        cands.append(Path(os.environ["INDUCTIONLAB_DATA"]).expanduser())
    repo_root = Path(__file__).resolve().parents[3]  # src/inductionlab/data/text.py -> repo
    cands += [repo_root.parent / "shared" / "data", Path("shared/data"), Path("../shared/data")]
    out, seen = [], set()
    for c in cands:
        try:
            key = c.resolve()
        except OSError:
            continue
        if key not in seen and c.is_dir():
            seen.add(key)
            out.append(c)
    return out


def _searched_text(data_dir: str) -> str:
    named = [f"data.data_dir={data_dir!r}" if data_dir else "data.data_dir (unset)",
             "$INDUCTIONLAB_DATA" + ("" if os.environ.get("INDUCTIONLAB_DATA") else " (unset)"),
             "../shared/data", "./shared/data"]
    return ", ".join(named)


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("INDUCTIONLAB_CACHE"):
        return Path(os.environ["INDUCTIONLAB_CACHE"]).expanduser()
    return Path("~/.cache/inductionlab").expanduser()


# --------------------------------------------------------------------------- corpora
@dataclass
class Corpus:
    """Documents per split plus where they came from and a content hash."""

    name: str
    source: str
    splits: dict[str, list[str]]
    digest: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.digest:
            h = hashlib.sha256(CACHE_VERSION.encode())
            for split in SPLITS:
                h.update(f"\0{split}\0{len(self.splits[split])}\0".encode())
                for doc in self.splits[split]:
                    h.update(doc.encode("utf-8", "surrogatepass"))
                    h.update(b"\0")
            self.digest = h.hexdigest()


_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_documents(lines: list[str]) -> list[str]:
    """Split WikiText lines into articles at level-1 headings (`` = Title = ``)."""
    docs: list[list[str]] = []
    for line in lines:
        if _HEADING.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line)
    texts = ["".join(d).strip() for d in docs]
    return [t for t in texts if t]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _local_wikitext(bases: list[Path], hub_name: str, suffix: str) -> Path | None:
    for base in bases:
        for d in (base / hub_name, base):
            if all((d / f"wiki.{s}.{suffix}").is_file() for s in SPLITS):
                return d
    return None


def _hub_wikitext(hub_name: str) -> dict[str, list[str]] | None:
    """The splits from the hub via ``datasets``; None when the library or the hub is unavailable."""
    try:
        import datasets  # optional dependency
    except ImportError:
        return None
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("INDUCTIONLAB_OFFLINE") == "1":
        return None
    try:
        ds = datasets.load_dataset("wikitext", hub_name)
        return {s: list(ds[HUB_SPLIT[s]]["text"]) for s in SPLITS}
    except Exception as exc:  # noqa: BLE001 - any hub/network failure means "not reachable"
        _note(f"could not load wikitext/{hub_name} from the hub ({type(exc).__name__})")
        return None


def load_corpus(corpus: str, data_dir: str = "") -> Corpus:
    """Find and read ``corpus`` (a WikiText-2 name or a path to ``.txt`` data)."""
    if corpus in WIKITEXT:
        return _load_wikitext(corpus, data_dir)
    path = Path(corpus).expanduser()
    if path.exists() or corpus.endswith(".txt") or "/" in corpus:
        return _load_txt(path)
    raise DataError(f"unknown data.corpus '{corpus}' (use wikitext-2, wikitext-2-raw, or a path to a "
                    ".txt file or a folder of .txt files)")


def _load_wikitext(corpus: str, data_dir: str) -> Corpus:
    hub_name, suffix = WIKITEXT[corpus]
    bases = search_bases(data_dir)
    found = _local_wikitext(bases, hub_name, suffix)
    if found is not None:
        lines = {s: _read(found / f"wiki.{s}.{suffix}").splitlines(keepends=True) for s in SPLITS}
        return Corpus(hub_name, str(found), {s: wikitext_documents(lines[s]) for s in SPLITS})
    hub = _hub_wikitext(hub_name)
    if hub is not None:
        return Corpus(hub_name, f"hub:wikitext/{hub_name}", {s: wikitext_documents(hub[s]) for s in SPLITS})
    if suffix == "raw":
        alt = _local_wikitext(bases, "wikitext-2-v1", "tokens")
        if alt is not None:
            note = (f"wiki.train.raw not found locally and the hub is not reachable: using the tokenised "
                    f"WikiText-2 (wiki.*.tokens, with <unk>) from {alt} for all splits")
            _note(note)
            lines = {s: _read(alt / f"wiki.{s}.tokens").splitlines(keepends=True) for s in SPLITS}
            return Corpus("wikitext-2-v1", str(alt), {s: wikitext_documents(lines[s]) for s in SPLITS},
                          notes=[note])
    raise DataError(f"WikiText-2 ({hub_name}) not found: looked for wiki.train.{suffix} and "
                    f"wiki.valid.{suffix} in {_searched_text(data_dir)} (and their {hub_name}/ "
                    f"subfolders), then the hub via the 'datasets' library; set data.data_dir or "
                    f"INDUCTIONLAB_DATA to a folder holding them, or pip install datasets with internet")


def _load_txt(path: Path) -> Corpus:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    else:
        raise DataError(f"data.corpus: no such file or folder: {path} (give a .txt file or a folder of .txt files)")
    if not files:
        raise DataError(f"data.corpus: {path} holds no .txt files")
    texts = {f: _read(f).strip() for f in files}
    texts = {f: t for f, t in texts.items() if t}
    if not texts:
        raise DataError(f"data.corpus: the .txt files under {path} are empty")
    def split_of(f: Path) -> str | None:  # whole words of the stem: train / valid / val / validation
        words = set(re.split(r"[^a-z]+", f.stem.lower()))
        is_train, is_valid = "train" in words, bool(words & {"valid", "val", "validation", "dev"})
        return None if is_train == is_valid else ("train" if is_train else "valid")

    train = [t for f, t in texts.items() if split_of(f) == "train"]
    valid = [t for f, t in texts.items() if split_of(f) == "valid"]
    if not train or not valid:
        docs = list(texts.values())
        if len(docs) == 1:  # one file: split its paragraphs into documents
            docs = [d.strip() for d in re.split(r"\n\s*\n", docs[0]) if d.strip()]
        if len(docs) < 2:
            raise DataError(f"data.corpus: {path} has a single document; need at least two to hold out validation text")
        n_val = max(1, len(docs) // 10)
        train, valid = docs[:-n_val], docs[-n_val:]
    return Corpus(path.name or str(path), str(path), {"train": train, "valid": valid})


# --------------------------------------------------------------------------- tokenizers
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
    for base in search_bases(data_dir):
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


_PREPARED: dict[tuple, TextData] = {}


def prepare_text(cfg) -> TextData:
    """Corpus, tokenizer and token ids for ``cfg.data`` (memoised per process)."""
    d = cfg.data
    key = (d.corpus, d.data_dir, d.tokenizer, d.bpe_vocab if d.tokenizer == "bpe" else 0,
           str(cache_root(d.cache_dir)), os.environ.get("INDUCTIONLAB_DATA", ""))
    if key not in _PREPARED:
        corpus = load_corpus(d.corpus, d.data_dir)
        tok = load_tokenizer(d.tokenizer, corpus, d.bpe_vocab, d.data_dir, d.cache_dir)
        ids, folder = tokenize_corpus(corpus, tok, d.cache_dir)
        _PREPARED[key] = TextData(corpus, tok, ids, folder)
    return _PREPARED[key]


def resolve_text_vocab(cfg) -> int:
    """Set ``cfg.model.vocab_size`` to the tokenizer's vocabulary (no-op for synthetic data).

    Call before building the model: it finds the data, loads or trains the tokenizer and fills
    the token cache, so the later :class:`TextTask` starts instantly.
    """
    if cfg.data.kind != "text":
        return cfg.model.vocab_size
    data = prepare_text(cfg)
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


# --------------------------------------------------------------------------- the task
class TextTask:
    """Next-token prediction on packed natural text (see the module docstring)."""

    headline = "val_loss"

    def __init__(self, cfg, device: torch.device, score_sequences: int = 16, eval_batch: int = 32):
        m, d, t = cfg.model, cfg.data, cfg.train
        self.cfg = cfg
        self.device = torch.device(device)
        self.data = prepare_text(cfg)
        if m.vocab_size != self.data.vocab_size:
            raise DataError(f"model.vocab_size={m.vocab_size} but the {d.tokenizer} tokenizer has "
                            f"{self.data.vocab_size} tokens; call inductionlab.data.text.resolve_text_vocab(cfg) "
                            f"before building the model (or set model.vocab_size={self.data.vocab_size})")
        self.n_ctx = m.n_ctx
        self.train_seqs = pack(self.data.ids["train"], m.n_ctx).to(self.device)
        val = pack(self.data.ids["valid"], m.n_ctx)
        if len(self.train_seqs) == 0 or len(val) == 0:
            raise DataError(f"corpus {d.corpus} is too small: fewer than model.n_ctx={m.n_ctx} tokens in the "
                            f"{'training' if len(self.train_seqs) == 0 else 'validation'} split")
        budget = d.max_eval_tokens or DEFAULT_MAX_EVAL_TOKENS
        n_eval = max(1, min(len(val), budget // m.n_ctx))
        pick = torch.linspace(0, len(val) - 1, n_eval).round().long().unique()  # spread over the split
        self.val_seqs = val[pick].to(self.device)
        self.eval_batch = eval_batch
        self.score_sequences = min(score_sequences, len(self.val_seqs))
        self.early, self.late = icl_indices(m.n_ctx)
        # repeated random tokens for prefix matching: [EOT] + r + r (+ head of r), r drawn from
        # the tokens that occur in the training text
        g_eval = torch.Generator().manual_seed(t.seed + EVAL_SEED_OFFSET)
        present = np.flatnonzero(np.bincount(np.asarray(self.data.ids["train"], dtype=np.int64),
                                             minlength=self.data.vocab_size))
        present = torch.from_numpy(present[present != self.data.eot])
        self.period = (m.n_ctx - 1) // 2
        r = present[torch.randint(0, len(present), (self.score_sequences or 16, self.period), generator=g_eval)]
        body = torch.cat([r, r, r], 1)[:, : m.n_ctx - 1]
        self.rep_tokens = torch.cat([torch.full((len(r), 1), self.data.eot), body], 1).to(self.device)
        self.rep_periods = torch.full((len(r),), self.period, device=self.device)
        # training order: a fresh permutation of the packed sequences per epoch
        self.gen = torch.Generator().manual_seed(t.seed)
        self.epoch = 0
        self.pos = 0
        self.perm = torch.randperm(len(self.train_seqs), generator=self.gen)

    # ----------------------------------------------------------------- training data
    def train_batch(self, batch_size: int):
        idx = []
        need = batch_size
        while need:
            take = self.perm[self.pos: self.pos + need]
            idx.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= len(self.perm):
                self.epoch += 1
                self.pos = 0
                self.perm = torch.randperm(len(self.train_seqs), generator=self.gen)
        return self.train_seqs[torch.cat(idx).to(self.device)], None

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state(), "perm": self.perm.clone(),
                "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        loss_pos = torch.zeros(self.n_ctx - 1, device=self.device)
        correct = torch.zeros((), device=self.device)
        for i in range(0, len(self.val_seqs), self.eval_batch):
            x = self.val_seqs[i: i + self.eval_batch]
            logits = model(x)
            loss_pos += token_losses(logits, x).sum(0)
            correct += token_correct(logits, x).sum()
        n = len(self.val_seqs)
        by_pos = loss_pos / n
        out: dict[str, Any] = {
            "val_loss": float(by_pos.mean()),
            "val_accuracy": float(correct / (n * (self.n_ctx - 1))),
            "icl_score": float(by_pos[self.late] - by_pos[self.early]),
            "icl_indices": [self.early, self.late],
            "loss_by_position": [round(float(v), 4) for v in by_pos],
        }
        # per-head scores
        k = self.score_sequences
        pats = model.patterns(self.val_seqs[:k])
        prev = {layer: previous_token_score(p, bos=False) for layer, p in pats.items()}
        rep_logits = model(self.rep_tokens)
        rep_pats = model.patterns(self.rep_tokens)
        pm = {layer: prefix_matching_score(p, self.rep_periods, bos=True) for layer, p in rep_pats.items()}
        second = slice(self.period, None)  # predictions whose target already occurred one period back
        out["repeat_loss"] = float(token_losses(rep_logits, self.rep_tokens)[:, second].mean())
        out["repeat_accuracy"] = float(token_correct(rep_logits, self.rep_tokens)[:, second].float().mean())
        out["previous_token"] = {str(layer): [round(float(x), 4) for x in s] for layer, s in prev.items()}
        out["prefix_matching"] = {str(layer): [round(float(x), 4) for x in s] for layer, s in pm.items()}
        if pats:
            out["best_previous_token_head"] = head_record(best_head(prev))
            out["best_induction_head"] = head_record(best_head(pm))
        if was_training:
            model.train()
        return out

    def analyze(self, model) -> dict[str, Any]:
        """Corpus figures (computed once: unigram entropy and sizes) and the weight-only
        measurements (copying, OV positivity, composition, conv kernel, sigma(alpha))."""
        from ..metrics.suite import weight_metrics

        return {**self._corpus_figures(), **weight_metrics(model, bos=False)}

    def _corpus_figures(self) -> dict[str, Any]:
        if not hasattr(self, "_corpus_stats"):
            v = self.data.vocab_size
            self._corpus_stats = {
                "unigram_entropy": round(unigram_entropy(self.data.ids["valid"], v), 4),
                "unigram_val_loss": round(unigram_cross_entropy(self.data.ids["train"], self.data.ids["valid"], v), 4),
                "train_tokens": int(len(self.data.ids["train"])),
                "val_tokens": int(len(self.data.ids["valid"])),
                "eval_tokens": int(self.val_seqs.numel()),
                "vocab_size": v,
                "data_source": self.data.corpus.source,
            }
        return dict(self._corpus_stats)

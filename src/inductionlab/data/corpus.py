"""Text corpora: WikiText-2 (local copy or the Hugging Face hub) or local ``.txt`` files, split
into documents per split, with a content hash (the token cache's key). Where data is looked for:
:func:`search_bases` and docs/text.md."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

#: version of the corpus hash and of the token-cache layout (a change invalidates old caches)
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
    repo_root = Path(__file__).resolve().parents[3]  # src/inductionlab/data/corpus.py -> repo
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

"""Natural text (the facade of data/corpus.py, data/tokenizer.py and data/cache.py): WikiText-2 (or local ``.txt`` files), BPE tokenisation with an on-disk cache,
packing into fixed-length sequences (the task that trains on it: tasks/text.py).

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

from .cache import (  # noqa: F401
    DEFAULT_MAX_EVAL_TOKENS,
    TextData,
    pack,
    prepare_text,
    resolve_text_vocab,
    tokenize_corpus,
    unigram_cross_entropy,
    unigram_entropy,
)
from .corpus import (  # noqa: F401
    CACHE_VERSION,
    HUB_SPLIT,
    SPLITS,
    WIKITEXT,
    Corpus,
    DataError,
    cache_root,
    load_corpus,
    search_bases,
    wikitext_documents,
)
from .tokenizer import EOT, load_gpt2_tokenizer, load_tokenizer, tokenizer_digest, train_bpe  # noqa: F401

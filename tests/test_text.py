"""Natural-text data: corpora, tokenizers, token cache, packing, TextTask, the -cpu presets."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from inductionlab.config import ConfigError
from inductionlab.configfile import load_config
from inductionlab.data import cache as cache_mod
from inductionlab.data import corpus as corpus_mod
from inductionlab.data import text
from inductionlab.data import tokenizer as tokenizer_mod
from inductionlab.data.text import DataError, resolve_text_vocab
from inductionlab.tasks import TextTask
from inductionlab.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = [REPO.parent / "shared" / "data", Path("/work/shared/data")]


def _shared() -> Path | None:
    for d in SHARED:
        if (d / "wikitext-2-v1" / "wiki.train.tokens").is_file():
            return d
    return None


needs_wikitext = pytest.mark.skipif(_shared() is None, reason="offline WikiText-2 copy (../shared/data) not present")

WORDS = ("the cat sat on a mat while the dog ran after it and then both of them fell asleep near "
         "an old red barn at the edge of a quiet village").split()


@pytest.fixture
def txt_corpus(tmp_path):
    """A folder with train.txt / valid.txt of pseudo-random sentences (each paragraph of a file
    is not split: each file is one document, so write several files)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(6):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), 3000)]
        (d / f"train_{i}.txt").write_text(" ".join(words) + "\n")
    words = [WORDS[j] for j in rng.integers(0, len(WORDS), 3000)]
    (d / "valid.txt").write_text(" ".join(words) + "\n")
    return d


def tiny_text_cfg(corpus: Path, cache: Path, *extra: str):
    return load_config("wikitext-conv-attn-cpu", [
        f"data.corpus={json.dumps(str(corpus))}", "data.tokenizer=bpe", "data.bpe_vocab=300",
        f"data.cache_dir={json.dumps(str(cache))}", "data.max_eval_tokens=1024",
        "model.d_model=32", "model.n_heads=2", "model.n_ctx=64", "train.batch_size=8",
        "train.steps=20", "train.warmup=2", "train.eval_every=10", "train.log_evals=0", *extra])


# --------------------------------------------------------------------------- corpora
def test_wikitext_documents_split_at_level1_headings():
    lines = [" \n", " = A = \n", " \n", " x y \n", " = = Sub = = \n", " z \n", " = B = \n", " w \n"]
    docs = text.wikitext_documents(lines)
    assert docs == ["= A = \n \n x y \n = = Sub = = \n z", "= B = \n w"]


def test_txt_corpus_splits(txt_corpus):
    c = text.load_corpus(str(txt_corpus))
    assert len(c.splits["train"]) == 6 and len(c.splits["valid"]) == 1
    # one file without split names: the last 10% of its paragraphs are held out
    f = txt_corpus.parent / "one.txt"
    f.write_text("\n\n".join(f"paragraph {i} " + " ".join(WORDS) for i in range(20)))
    c1 = text.load_corpus(str(f))
    assert len(c1.splits["train"]) == 18 and len(c1.splits["valid"]) == 2
    assert c1.digest != c.digest
    # split names are whole words: "interval" is not "val", and a file named both is in neither
    d = txt_corpus.parent / "named"
    d.mkdir()
    (d / "my_train.txt").write_text("alpha " * 50)
    (d / "dev-valid.txt").write_text("beta " * 50)
    (d / "interval.txt").write_text("gamma " * 50)
    (d / "train_val.txt").write_text("delta " * 50)
    c2 = text.load_corpus(str(d))
    assert [t.split()[0] for t in c2.splits["train"]] == ["alpha"]
    assert [t.split()[0] for t in c2.splits["valid"]] == ["beta"]


def test_missing_data_is_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus_mod, "search_bases", lambda data_dir="": [tmp_path])
    with pytest.raises(DataError) as exc:
        text.load_corpus("wikitext-2")
    msg = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in msg
    assert "wiki.train.tokens" in msg and "INDUCTIONLAB_DATA" in msg and "datasets" in msg
    with pytest.raises(DataError, match="no such file or folder"):
        text.load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="GPT-2 tokenizer not found"):
        text.load_gpt2_tokenizer()
    with pytest.raises(DataError, match="unknown data.corpus"):
        text.load_corpus("wikitext-103")


def test_missing_data_cli_exits_2(tmp_path, capsys):
    from inductionlab.cli import main

    rc = main(["train", "wikitext-conv-attn-cpu", "--quiet", "--out", str(tmp_path / "run"),
               "--set", f"data.corpus={json.dumps(str(tmp_path / 'missing.txt'))}",
               "--set", "model.d_model=32", "--set", "model.n_heads=2"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inductionlab: error:") and "missing.txt" in err and "\n" not in err


def test_config_validation_for_text():
    with pytest.raises(ConfigError, match="bpe_vocab"):
        load_config("wikitext-conv-attn-cpu", ["data.bpe_vocab=100"])
    with pytest.raises(ConfigError, match="max_eval_tokens"):
        load_config("wikitext-conv-attn-cpu", ["data.max_eval_tokens=10"])


def _mini_wikitext(root: Path, suffix: str, splits=("train", "valid", "test")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in splits:
        (root / f"wiki.{s}.{suffix}").write_text(
            "".join(f" \n = {s} article {i} = \n \n {' '.join(WORDS)} \n" for i in range(3)))
    return root


def test_raw_falls_back_to_tokens_offline(monkeypatch, tmp_path, capsys):
    _mini_wikitext(tmp_path / "wikitext-2-raw-v1", "raw", splits=("valid", "test"))  # like the offline copy
    _mini_wikitext(tmp_path / "wikitext-2-v1", "tokens")
    monkeypatch.setattr(corpus_mod, "search_bases", lambda data_dir="": [tmp_path])
    c = text.load_corpus("wikitext-2-raw")
    assert c.name == "wikitext-2-v1" and c.notes and "wiki.train.raw" in c.notes[0]
    assert "tokenised" in capsys.readouterr().err
    assert len(c.splits["train"]) == 3 and c.splits["train"][0].startswith("= train article 0 =")


def test_hub_path_mocked(monkeypatch, tmp_path):
    """No network: ``datasets.load_dataset`` is replaced by a fake returning the HF layout."""
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        rows = [" \n", " = Hub Article = \n", " \n", " text from the hub \n"]
        return {"train": {"text": rows}, "validation": {"text": rows[:2] + [" valid line \n"]},
                "test": {"text": rows}}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(corpus_mod, "search_bases", lambda data_dir="": [tmp_path])
    c = text.load_corpus("wikitext-2-raw")
    assert calls == [("wikitext", "wikitext-2-raw-v1")]
    assert c.source == "hub:wikitext/wikitext-2-raw-v1"
    assert c.splits["train"] == ["= Hub Article = \n \n text from the hub"]
    assert c.splits["valid"] == ["= Hub Article = \n valid line"]

    def broken(path, name):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    with pytest.raises(DataError, match="not found"):
        text.load_corpus("wikitext-2")


# --------------------------------------------------------------------------- tokenizers + cache
@needs_wikitext
def test_gpt2_tokenizer_local_files_agree(tmp_path):
    src = _shared() / "gpt2-tokenizer"
    only_vm = tmp_path / "vm"
    only_vm.mkdir()
    for f in ("vocab.json", "merges.txt"):
        (only_vm / f).write_bytes((src / f).read_bytes())
    a = text.load_tokenizer(str(src / "tokenizer.json"), None, 0)
    b = text.load_tokenizer(str(only_vm), None, 0)
    sample = " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : <unk> Chronicles"
    assert a.encode(sample).ids == b.encode(sample).ids
    assert a.get_vocab_size() == b.get_vocab_size() == 50257
    assert a.token_to_id(text.EOT) == b.token_to_id(text.EOT) == 50256


@needs_wikitext
def test_offline_train_split_tokenised_once_then_cached(monkeypatch, tmp_path):
    """GPT-2-tokenise the offline WikiText-2 train split twice: the second time the tokenizer is
    not called; the ids come memory-mapped from the cache."""
    corpus = text.load_corpus("wikitext-2", str(_shared()))
    corpus.splits["valid"] = corpus.splits["valid"][:2]  # keep the test about the train split
    tok = text.load_gpt2_tokenizer(str(_shared()))
    calls = []
    real = cache_mod._encode_documents

    def counting(tok_, docs, eot):
        calls.append(len(docs))
        return real(tok_, docs, eot)

    monkeypatch.setattr(cache_mod, "_encode_documents", counting)
    first, folder = text.tokenize_corpus(corpus, tok, str(tmp_path))
    assert len(calls) == 2 and calls[0] == len(corpus.splits["train"])
    assert len(first["train"]) > 2_000_000 and first["train"].dtype == np.uint16
    assert int(first["train"][-1]) == 50256  # every document ends with <|endoftext|>
    assert (np.asarray(first["train"]) == 50256).sum() == len(corpus.splits["train"])

    def boom(*a, **k):
        raise AssertionError("tokenizer called although the cache is warm")

    monkeypatch.setattr(cache_mod, "_encode_documents", boom)
    second, folder2 = text.tokenize_corpus(corpus, tok, str(tmp_path))
    assert folder2 == folder and isinstance(second["train"], np.memmap)
    assert np.array_equal(np.asarray(second["train"]), np.asarray(first["train"]))
    assert not list(folder.glob("*.tmp"))  # atomic writes leave no temporary files


def test_trained_bpe_cached_and_vocab_resolved(txt_corpus, tmp_path, monkeypatch):
    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache")
    assert resolve_text_vocab(cfg) == cfg.model.vocab_size == 300
    assert list((tmp_path / "cache" / "bpe").glob("*-300.json"))
    monkeypatch.setattr(tokenizer_mod, "train_bpe", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    monkeypatch.setattr(cache_mod, "_encode_documents", lambda *a: (_ for _ in ()).throw(AssertionError("re-encoded")))
    cfg2 = tiny_text_cfg(txt_corpus, tmp_path / "cache")
    assert resolve_text_vocab(cfg2) == 300  # tokenizer and ids both from the cache


# --------------------------------------------------------------------------- packing + task
def test_pack_has_no_padding():
    ids = np.arange(10 * 7 + 3, dtype=np.uint16)
    seqs = text.pack(ids, 7)
    assert seqs.shape == (10, 7) and seqs.dtype == torch.int64
    assert torch.equal(seqs.flatten(), torch.arange(70))


def test_icl_indices():  # the text task uses the one rule of metrics/icl.py
    from inductionlab.tasks import text as text_task

    assert text_task.icl_indices(1024) == (50, 500)
    assert text_task.icl_indices(256) == (50, 254)
    assert text_task.icl_indices(64) == (12, 62)


def test_task_vocab_mismatch_is_user_error(txt_corpus, tmp_path):
    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache", "model.vocab_size=999")
    with pytest.raises(DataError, match="resolve_text_vocab"):
        TextTask(cfg, torch.device("cpu"))


def test_task_batches_epochs_and_exact_resume(txt_corpus, tmp_path):
    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache")
    resolve_text_vocab(cfg)
    a = TextTask(cfg, torch.device("cpu"))
    n = len(a.train_seqs)
    seen = torch.cat([a.train_batch(8)[0] for _ in range(math.ceil(n / 8))])[:n]
    # one epoch visits every packed sequence exactly once
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, a.train_seqs.tolist()))
    for _ in range(3):
        a.train_batch(8)
    state = a.state_dict()
    want = [a.train_batch(8)[0] for _ in range(n // 8 + 3)]  # crosses an epoch boundary
    b = TextTask(cfg, torch.device("cpu"))
    b.load_state_dict(state)
    got = [b.train_batch(8)[0] for _ in range(n // 8 + 3)]
    assert all(torch.equal(x, y) for x, y in zip(want, got))
    tokens, mask = b.train_batch(5)
    assert tokens.shape == (5, 64) and tokens.dtype == torch.int64 and mask is None


def test_task_evaluate_keys(txt_corpus, tmp_path):
    from inductionlab.train import init_model

    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache", "model.arch=attn-attn")
    resolve_text_vocab(cfg)
    task = TextTask(cfg, torch.device("cpu"))
    model = init_model(cfg, torch.device("cpu"))
    ev = task.evaluate(model)
    assert abs(ev["val_loss"] - math.log(300)) < 0.5  # untrained: about uniform
    assert 0 <= ev["val_accuracy"] <= 1 and ev["icl_indices"] == [12, 62]
    assert len(ev["loss_by_position"]) == 63
    assert set(ev["previous_token"]) == set(ev["prefix_matching"]) == {"0", "1", "2", "3"}
    assert all(len(v) == 2 for v in ev["prefix_matching"].values())
    assert ev["best_induction_head"]["name"].startswith("L")
    an = task.analyze(model)
    assert an["unigram_entropy"] > 0 and an["vocab_size"] == 300
    assert task.val_seqs.numel() <= 1024


# --------------------------------------------------------------------------- training end to end
def test_leaky_conv_stops_the_run(txt_corpus, tmp_path, capsys):
    from inductionlab.causality import CausalityError
    from inductionlab.cli import main
    from inductionlab.train import train

    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache", "model.conv_padding=same")
    resolve_text_vocab(cfg)
    with pytest.raises(CausalityError, match="not causal"):
        train(cfg, tmp_path / "leaky", progress=False)
    assert not (tmp_path / "leaky" / "metrics.jsonl").exists()
    rc = main(["train", "wikitext-conv-attn-cpu", "--quiet", "--out", str(tmp_path / "leaky2"),
               "--set", f"data.corpus={json.dumps(str(txt_corpus))}", "--set", "data.bpe_vocab=300",
               "--set", "model.vocab_size=300", "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
               "--set", "model.d_model=32", "--set", "model.n_heads=2", "--set", "model.conv_padding=same"])
    assert rc == 2
    assert "not causal" in capsys.readouterr().err


def test_tiny_text_run_learns(txt_corpus, tmp_path):
    """A few steps on the toy corpus: the causality guard passes and validation loss drops."""
    from inductionlab.train import train

    cfg = tiny_text_cfg(txt_corpus, tmp_path / "cache", "train.steps=40", "train.lr=1e-2", "train.eval_every=40")
    resolve_text_vocab(cfg)
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["steps"] == 40 and s["val_loss"] < s["unigram_entropy"]
    assert s["tokens_seen"] == 40 * 8 * 64


@needs_wikitext
@pytest.mark.parametrize("preset", ["wikitext-conv-attn-cpu", "wikitext-attn-attn-cpu"])
def test_cpu_presets_run_offline_small(preset, tmp_path_factory):
    """Both -cpu presets on the offline WikiText-2 copy, shrunk (steps, width, context)."""
    from inductionlab.train import train

    cache = tmp_path_factory.getbasetemp() / "wt-cache"  # shared by both presets: BPE trained once
    cfg = load_config(preset, [f"data.data_dir={json.dumps(str(_shared()))}",
                               f"data.cache_dir={json.dumps(str(cache))}", "train.steps=30",
                               "model.d_model=32", "model.n_heads=2", "model.n_ctx=64",
                               "train.batch_size=8", "data.max_eval_tokens=2048", "train.eval_every=30",
                               "train.log_evals=0", "train.lr=1e-2"])
    resolve_text_vocab(cfg)
    assert cfg.model.vocab_size == 2048
    out = tmp_path_factory.mktemp(preset) / "run"
    s = train(cfg, out, progress=False)
    assert s["steps"] == 30 and math.isfinite(s["val_loss"]) and s["val_loss"] < math.log(2048)
    assert (out / "summary.json").exists()


@needs_wikitext
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["wikitext-conv-attn-cpu", "wikitext-attn-attn-cpu"])
def test_cpu_presets_beat_unigram(preset, tmp_path):
    """The full -cpu presets: validation loss well under the unigram entropy (several minutes)."""
    from inductionlab.train import train

    cfg = load_config(preset, [f"data.data_dir={json.dumps(str(_shared()))}"])
    resolve_text_vocab(cfg)
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["val_loss"] < s["unigram_entropy"] - 1.0
    assert s["val_loss"] < s["unigram_val_loss"] - 1.0


def test_gpu_presets_match_the_issue():
    from inductionlab.models.registry import layer_list

    conv = load_config("wikitext-conv-attn")
    attn = load_config("wikitext-attn-attn")
    assert layer_list(conv.model) == ["conv", "attn"] and conv.model.conv_residual is False
    assert conv.model.conv_kernel == 5 and conv.model.d_model == 512 and conv.model.n_heads == 8
    assert layer_list(attn.model) == ["attn"] * 4
    for c in (conv, attn):
        t = c.train
        assert (t.lr, t.schedule, t.warmup, t.batch_size, c.model.n_ctx, t.grad_clip, t.seed) == \
            (3e-4, "cosine", 500, 32, 256, 1.0, 42)
        assert (t.device, t.amp, c.data.kind, c.data.tokenizer) == ("auto", "fp16", "text", "gpt2")
        assert t.steps == round(15 * (2_445_191 // 256) / 32)  # 15 epochs of the GPT-2-tokenised train split


def test_text_analyze_logs_weight_metrics_and_conv_profile(tmp_path, monkeypatch):
    """Text runs get the weight-only suite: the conv-kernel profile per offset among them."""
    import torch

    from inductionlab.configfile import load_config
    from inductionlab.data.text import resolve_text_vocab
    from inductionlab.tasks import TextTask
    from inductionlab.train import init_model

    monkeypatch.setenv("INDUCTIONLAB_CACHE", str(tmp_path / "cache"))
    cfg = load_config("wikitext-conv-attn-cpu", ["model.d_model=32", "data.max_eval_tokens=1024"])
    resolve_text_vocab(cfg)
    model = init_model(cfg, torch.device("cpu"))
    out = TextTask(cfg, torch.device("cpu")).analyze(model)
    assert len(out["conv_kernel"]["0"]) == cfg.model.conv_kernel
    # identity-initialised non-residual conv: the weight at offset t dominates
    prof = out["conv_kernel"]["0"]
    assert prof[0] > 0.5 and all(abs(x) < 0.2 for x in prof[1:])
    assert set(out["ov_positivity"]) == {"1"} and len(out["composition"]["heads"]) == cfg.model.n_heads
    assert out["unigram_entropy"] > 5

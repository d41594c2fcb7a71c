"""Next-token prediction on natural text (``data.kind = "text"``): WikiText-2 or local ``.txt``
files, GPT-2 or a trained BPE (data/corpus.py, data/tokenizer.py and data/cache.py find, tokenise
and cache the corpus).

The headline is the validation loss (lower is better). Evaluations also log the ICL score, the
loss by position, and per-head previous-token scores on validation text and prefix-matching
scores on ``[EOT] + r + r`` with ``r`` drawn from the tokens of the training text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config, DataConfig, check
from ..data.synthetic import EVAL_SEED_OFFSET
from ..data.cache import DEFAULT_MAX_EVAL_TOKENS, TextData, pack, prepare_text, unigram_cross_entropy, unigram_entropy
from ..data.corpus import DataError
from ..data.tokenizer import tokenizer_digest
from ..metrics.heads import Probe, pattern_head_scores
from ..metrics.icl import icl_indices
from ..metrics.induction import token_correct, token_losses
from ..metrics.suite import weight_metrics
from ..models.mode import eval_mode
from ..registry import TaskSpec, register_task

@dataclass
class TextConfig(DataConfig):
    kind: str = "text"
    corpus: str = "wikitext-2"
    data_dir: str = ""
    tokenizer: str = "gpt2"
    bpe_vocab: int = 4096
    max_eval_tokens: int = 0
    #: where tokenised corpora and trained tokenizers are cached ("" -> $INDUCTIONLAB_CACHE or
    #: ~/.cache/inductionlab)
    cache_dir: str = ""

    def validate(self, cfg: Config) -> None:
        n_ctx = cfg.model.n_ctx
        check(bool(self.corpus), "data.corpus must name a corpus (wikitext-2, wikitext-2-raw) or a path to .txt data")
        check(bool(self.tokenizer), "data.tokenizer must be 'gpt2', 'bpe' or a path to a tokenizer.json")
        check(self.bpe_vocab >= 260, f"data.bpe_vocab must be >= 260 (256 bytes + special tokens), got {self.bpe_vocab}")
        check(self.max_eval_tokens == 0 or self.max_eval_tokens >= n_ctx,
              f"data.max_eval_tokens must be 0 (default bound) or >= model.n_ctx ({n_ctx}), got {self.max_eval_tokens}")


def prepare(cfg: Config) -> tuple[Config, TextData]:
    """``(copy of cfg with model.vocab_size = the tokenizer's, the prepared data)``."""
    data = prepare_text(cfg)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=data.vocab_size)), data


def fingerprint(cfg: Config, data: TextData | None = None) -> dict[str, str]:
    data = data or prepare_text(cfg)
    return {"corpus": data.corpus.digest, "tokenizer": tokenizer_digest(data.tokenizer)}


def sample(cfg: Config) -> tuple[str, list[int], list[str]]:
    """The first validation sequence (up to 64 tokens) labelled with the tokenizer's strings."""
    data = prepare_text(cfg)
    n = min(cfg.model.n_ctx, 64)
    toks = pack(data.ids["valid"], cfg.model.n_ctx)[0, :n].tolist()
    labels = [str(data.tokenizer.id_to_token(int(t))).replace("\u0120", " ").replace("\u010a", "↵") for t in toks]
    return "validation text", toks, labels


class TextTask:
    """Next-token prediction on packed natural text (see the module docstring)."""

    def __init__(self, cfg: Config, device: torch.device, data: TextData | None = None,
                 score_sequences: int = 16, eval_batch: int = 32):
        m, d, t = cfg.model, cfg.data, cfg.train
        self.spec = SPEC
        self.cfg = cfg
        self.device = torch.device(device)
        self.data = data or prepare_text(cfg)
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
    def train_batch(self, batch_size: int) -> tuple[torch.Tensor, None]:
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
        with eval_mode(model):
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
            rep_logits = model(self.rep_tokens)
            second = slice(self.period, None)  # predictions whose target already occurred one period back
            out["repeat_loss"] = float(token_losses(rep_logits, self.rep_tokens)[:, second].mean())
            out["repeat_accuracy"] = float(token_correct(rep_logits, self.rep_tokens)[:, second].float().mean())
            probes = {"sequence": Probe(self.val_seqs[: self.score_sequences], bos=False),
                      "repeat": Probe(self.rep_tokens, bos=True, periods=self.rep_periods)}
            out.update(pattern_head_scores(model, probes))
        return out

    def analyze(self, model) -> dict[str, Any]:
        """Corpus figures (computed once: unigram entropy and sizes) and the weight-only
        measurements (copying, OV positivity, composition, conv kernel, sigma(alpha))."""
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


SPEC = register_task(TaskSpec(
    "text", TextConfig, TextTask, headline="val_loss", higher_is_better=False, headline_range=(0.0, None),
    description="next-token prediction on natural text",
    prepare=prepare, fingerprint=fingerprint, sample=sample))

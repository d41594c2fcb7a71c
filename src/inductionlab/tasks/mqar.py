"""Multi-query associative recall (``data.kind = "mqar"``; Zoology's MQAR, Arora et al. 2023).

A sequence is ``[BOS] k_1 v_1 ... k_N v_N q_1 a_1 ... q_Q a_Q``: ``N = data.n_pairs`` key-value
pairs (distinct keys from the lower half of the vocabulary, values from the upper half), then
``Q = data.n_queries`` of those keys again in random order, each followed by its value. The
headline, ``mqar_accuracy``, is argmax accuracy of the predictions made at the query keys (their
targets are the values). Like induction, recall needs the previous token in the keys: a head at
``q_j`` must find the position whose *previous* token is ``q_j``, so one attention layer cannot
do it and two can (presets ``mqar-1l`` and ``mqar-2l``). The per-head ``recall`` score is the
attention a query key pays to the value after its earlier occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config, DataConfig, check
from ..data.synthetic import BOS, EVAL_SEED_OFFSET
from ..metrics.heads import Probe, pattern_head_scores
from ..metrics.induction import token_correct, token_losses
from ..metrics.suite import weight_metrics
from ..models.mode import eval_mode
from ..registry import TaskSpec, register_task

@dataclass
class MQARConfig(DataConfig):
    kind: str = "mqar"
    #: key-value pairs per sequence
    n_pairs: int = 8
    #: queries per sequence (0 = n_pairs): every pair once in random order, then again in a fresh
    #: order while more queries remain (a later query may also be answered from an earlier one)
    n_queries: int = 0
    #: filler tokens spread at random between the pairs (so a pair's position varies from sequence
    #: to sequence and attending to fixed positions cannot answer); the filler is the last token id
    fillers: int = 0
    bos: bool = True

    @property
    def queries(self) -> int:
        return self.n_queries or self.n_pairs

    def seq_len(self) -> int:
        return (1 if self.bos else 0) + 2 * (self.n_pairs + self.queries) + self.fillers

    def n_keys(self, vocab_size: int) -> int:
        """Keys are tokens ``1 .. n_keys``; values the tokens above."""
        return (vocab_size - 1) // 2

    def validate(self, cfg: Config) -> None:
        v, n_ctx = cfg.model.vocab_size, cfg.model.n_ctx
        check(self.n_pairs >= 1, f"data.n_pairs must be >= 1, got {self.n_pairs}")
        check(self.n_queries >= 0, f"data.n_queries must be >= 0 (0 = n_pairs), got {self.n_queries}")
        check(self.fillers >= 0, f"data.fillers must be >= 0, got {self.fillers}")
        check(self.seq_len() <= n_ctx, f"an MQAR sequence is {self.seq_len()} tokens (BOS + 2 x (n_pairs + n_queries) + fillers), "
                                       f"more than model.n_ctx={n_ctx}")
        k = self.n_keys(v)
        n_values = v - 1 - k - (1 if self.fillers else 0)
        check(k >= self.n_pairs and n_values >= 2,
              f"model.vocab_size={v} leaves {k} keys for data.n_pairs={self.n_pairs} distinct keys and "
              f"{max(0, n_values)} values (need at least n_pairs keys and 2 values)")


@dataclass
class RecallBatch:
    tokens: torch.Tensor  # [batch, seq] int64
    #: [batch, seq-1] bool: the predictions made at query keys (their targets are the values)
    answer_mask: torch.Tensor
    #: [batch, seq, seq] bool: for each query key position, the value after its earlier occurrence
    targets: torch.Tensor


class RecallSequences:
    """Generator of MQAR batches on ``device`` from its own ``torch.Generator``."""

    def __init__(self, d: MQARConfig, vocab_size: int, device: torch.device | str = "cpu", seed: int = 0):
        self.d, self.vocab_size = d, vocab_size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def sample(self, batch: int) -> RecallBatch:
        d, g, dev = self.d, self.generator, self.device
        n, q, off = d.n_pairs, d.queries, 1 if d.bos else 0
        n_keys = d.n_keys(self.vocab_size)
        keys = torch.rand(batch, n_keys, generator=g, device=dev).argsort(-1)[:, :n] + 1  # distinct
        fill = self.vocab_size - 1 if d.fillers else None  # the filler token (no value takes it)
        values = torch.randint(n_keys + 1, self.vocab_size - (1 if d.fillers else 0), (batch, n), generator=g, device=dev)
        which = torch.rand(batch, n, generator=g, device=dev).argsort(-1)  # pairs queried: each once, shuffled,
        while which.shape[1] < q:  # then (more queries than pairs) again in a fresh order
            which = torch.cat([which, torch.rand(batch, n, generator=g, device=dev).argsort(-1)], 1)
        which = which[:, :q]
        # the kv section: n pairs and f fillers in random order, pairs in index order; pair j is item
        # p_j of the n + f items, so its key sits at p_j + j (j pairs of width 2 before it)
        f = d.fillers
        if f:
            items = torch.rand(batch, n + f, generator=g, device=dev).argsort(-1)[:, :n].sort(-1).values
        else:  # no draw: the stream of a run without fillers does not depend on this option
            items = torch.arange(n, device=dev).expand(batch, n)
        key_at = items + torch.arange(n, device=dev)  # [batch, n] within the kv section
        kv = torch.full((batch, 2 * n + f), fill if f else 0, dtype=torch.long, device=dev)
        kv.scatter_(1, key_at, keys)
        kv.scatter_(1, key_at + 1, values)
        qa = torch.stack([keys.gather(1, which), values.gather(1, which)], -1).view(batch, 2 * q)
        parts = [kv, qa] if not d.bos else [torch.full((batch, 1), BOS, dtype=torch.long, device=dev), kv, qa]
        tokens = torch.cat(parts, 1)
        t = tokens.shape[1]
        query_pos = off + 2 * n + f + 2 * torch.arange(q, device=dev)  # positions of q_1 .. q_Q
        answer = torch.zeros(t - 1, dtype=torch.bool, device=dev)
        answer[query_pos] = True
        targets = torch.zeros(batch, t, t, dtype=torch.bool, device=dev)
        rows = torch.arange(batch, device=dev)[:, None].expand(batch, q)
        targets[rows, query_pos[None].expand(batch, q), off + key_at.gather(1, which) + 1] = True  # the value after k
        return RecallBatch(tokens, answer[None].expand(batch, t - 1), targets)


class MQARTask:
    """Multi-query associative recall; held-out evaluation on a fixed set."""

    def __init__(self, cfg: Config, device: torch.device):
        d, t = cfg.data, cfg.train
        self.spec = SPEC
        self.cfg = cfg
        self.loss_on = t.loss_on
        self.data = RecallSequences(d, cfg.model.vocab_size, device, seed=t.seed)
        held_out = RecallSequences(d, cfg.model.vocab_size, device, seed=t.seed + EVAL_SEED_OFFSET)
        self.eval_batch = held_out.sample(d.eval_sequences)

    def train_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.data.sample(batch_size)
        return b.tokens, (b.answer_mask if self.loss_on == "induction" else None)

    @torch.no_grad()
    def evaluate(self, model, score_sequences: int = 32) -> dict[str, Any]:
        b = self.eval_batch
        with eval_mode(model):
            logits = model(b.tokens)
            m = b.answer_mask
            losses = token_losses(logits, b.tokens)
            out: dict[str, Any] = {
                "mqar_accuracy": float((token_correct(logits, b.tokens) & m).sum() / m.sum()),
                "mqar_loss": float((losses * m).sum() / m.sum()),
                "val_loss": float(losses.mean()),
            }
            probe = Probe(b.tokens, self.cfg.data.bos, targets=b.targets, queries=torch.nn.functional.pad(m, (0, 1)))
            out.update(pattern_head_scores(model, {"sequence": probe, "recall": probe}, n=score_sequences))
        return out

    def analyze(self, model) -> dict[str, Any]:
        """The weight-only measurements (copying, OV positivity, composition, ...)."""
        with eval_mode(model):
            return weight_metrics(model, bos=self.cfg.data.bos)

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.data.load_state_dict(state)


def sample(cfg: Config) -> tuple[str, list[int], list[str]]:
    """One held-out MQAR sequence, keys labelled ``k``, values ``v``."""
    b = RecallSequences(cfg.data, cfg.model.vocab_size, seed=cfg.train.seed + EVAL_SEED_OFFSET).sample(1)
    n_keys = cfg.data.n_keys(cfg.model.vocab_size)
    toks = b.tokens[0].tolist()
    fill = cfg.model.vocab_size - 1 if cfg.data.fillers else None
    labels = ["BOS" if (cfg.data.bos and i == 0) else "_" if x == fill else (f"k{x}" if x <= n_keys else f"v{x}")
              for i, x in enumerate(toks)]
    return f"associative recall ({cfg.data.n_pairs} pairs, {cfg.data.queries} queries)", toks, labels


SPEC = register_task(TaskSpec(
    "mqar", MQARConfig, MQARTask, headline="mqar_accuracy", higher_is_better=True,
    description="multi-query associative recall (key-value pairs, then queries of earlier keys)",
    sample=sample))

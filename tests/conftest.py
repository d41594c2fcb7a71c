"""Shared fixtures. ``trained_2l`` trains the ``induction-2l`` preset once per test session."""

from __future__ import annotations

import pytest
import torch

from inductionlab.configfile import load_config


@pytest.fixture(scope="session")
def trained_2l(tmp_path_factory):
    """``(cfg, model, run_dir, summary)`` of an ``induction-2l`` run (seed 0, to 600 steps, no early
    stop, so the circuit is clean). About 10-15 s on 2 CPU cores."""
    from inductionlab.evaluation import load_run
    from inductionlab.train import train

    out = tmp_path_factory.mktemp("induction-2l") / "run"
    cfg = load_config("induction-2l", ["train.steps=600", "train.target_accuracy=0", "train.seed=0"])
    summary = train(cfg, out, progress=False)
    cfg, model = load_run(out)
    return cfg, model, out, summary


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests must not touch the network: any socket connection attempt fails loudly."""
    import socket

    def guard(*args, **kwargs):
        raise RuntimeError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

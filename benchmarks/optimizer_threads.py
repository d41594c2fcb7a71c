"""Steps/s of the induction-2l training step: fused vs foreach AdamW, 1 vs 2 threads (side by side).

    .venv/bin/python benchmarks/optimizer_threads.py
"""

from __future__ import annotations

import time

import torch

from inductionlab.configfile import load_config
from inductionlab.tasks import RepeatTask
from inductionlab.train import init_model, training_loss


def steps_per_second(fused: bool, threads: int, steps: int = 150) -> float:
    torch.set_num_threads(threads)
    cfg = load_config("induction-2l")
    dev = torch.device("cpu")
    model = init_model(cfg, dev)
    task = RepeatTask(cfg, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    for i in range(steps + 20):
        if i == 20:
            t0 = time.perf_counter()
        tokens, mask = task.train_batch(32)
        loss = training_loss(model(tokens), tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - t0)


if __name__ == "__main__":
    print("| optimizer | threads | steps/s (round 1) | steps/s (round 2) |")
    print("|---|---:|---:|---:|")
    results = {}
    for rnd in range(2):
        for fused in (True, False):
            for threads in (1, 2):
                results.setdefault((fused, threads), []).append(steps_per_second(fused, threads))
    for (fused, threads), v in results.items():
        print(f"| {'fused' if fused else 'foreach'} | {threads} | {v[0]:.1f} | {v[1]:.1f} |")

"""How much slower one core computes while the other core computes too (no communication at all).

Usage: python scripts/core_interference.py [SECONDS]
Runs the SPLADE head's matmuls (batch×64 tokens × 384 → 30,522, forward and backward) with one
torch thread pinned to core 0, first alone, then at the same time as an identical process pinned to
core 1. The ratio bounds the 2-worker scaling efficiency `sparse-ray bench` can reach on this machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time


def work(core: int, seconds: float, out: mp.Queue) -> None:
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    x = torch.randn(8 * 64, 384, requires_grad=True)
    w = torch.randn(30522, 384, requires_grad=True)
    for _ in range(3):  # warm-up
        (x @ w.T).relu().max(dim=0).values.sum().backward()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        (x @ w.T).relu().max(dim=0).values.sum().backward()
        n += 1
    out.put(n / (time.perf_counter() - start))


def run(cores: list[int], seconds: float) -> list[float]:
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=work, args=(c, seconds, out)) for c in cores]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return rates


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    alone = run([0], seconds)[0]
    both = run([0, 1], seconds)
    print(f"alone on core 0: {alone:.2f} it/s; both cores busy: {both[0]:.2f} and {both[1]:.2f} it/s")
    print(f"per-core speed with both busy: {min(both) / alone:.2f}–{max(both) / alone:.2f} of alone")

"""Peak memory of one training step against the global batch, with and without GradCache.

One fresh process per setting (peak RSS is per process): MiniLM SPLADE with the fused head, rows
from the bundled python sample (anchor, positive, 1 negative), seq 128, the run's objective
(``build_loss``: MNRL + global FLOPS), one forward + backward. Prints one JSON line per setting.

Usage: python scripts/bench_gradcache.py [--batches 16,64,256] [--mini 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(batch: int, mini: int) -> dict:
    import torch

    from sparse_ray.config import TrainConfig, resolve_base_model
    from sparse_ray.evaluate import read_rows
    from sparse_ray.fused_head import use_fused_head
    from sparse_ray.model import build_model
    from sparse_ray.worker.loss import build_loss

    torch.manual_seed(0)
    model = build_model("splade", resolve_base_model("minilm"), 128, dropout=0.0)  # equal losses across settings
    assert use_fused_head(model) is None
    model.train()
    rows = read_rows("sample", "python", batch)
    loss = build_loss(model, TrainConfig(mini_batch_size=mini), "splade", world=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    features = [model.preprocess([r[c] for r in rows]) for c in ("anchor", "positive", "negative_1")]
    total = sum(loss(features, None).values())
    total.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "global_batch": batch,
        "mini_batch": mini or None,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_gb": round(peak / 2**20, 3),
        "step_growth_gb": round((peak - before) / 2**20, 3),
        "loss": float(total.detach()),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="16,64,256")
    p.add_argument("--mini", type=int, default=16)
    p.add_argument("--out")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        batch, mini = map(int, args.one.split(","))
        print(json.dumps(one(batch, mini)))
        return
    results = []
    for batch in map(int, args.batches.split(",")):
        for mini in (0, args.mini):
            if mini and mini >= batch:
                continue
            out = subprocess.run([sys.executable, __file__, "--one", f"{batch},{mini}"], capture_output=True, text=True)
            line = (
                out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps({"error": out.stderr[-500:]})
            )
            print(line, flush=True)
            results.append(json.loads(line))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()

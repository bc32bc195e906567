"""Where a training worker's main thread spends its time, from py-spy's collapsed stacks.

Usage: python scripts/profile_summary.py rank-0.txt [rank-1.txt ...]
(written by ``py-spy record --format raw --idle``; see scripts/profile_workers.sh)

Only samples of the thread running ``train_loop`` count. Each sample goes to the first stage whose
pattern its stack matches, in the order below (a gradient exchange inside a backward hook counts as
exchange, not backward), and the leaf frames with the most samples are listed.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

STAGES = [
    ("gradient exchange", r"reduce_scatter|all_gather|allreduce|all_reduce|average_tensor|reduce_ipg|broadcast"),
    ("optimizer step", r"_take_model_step|optimizer_step|cpu_adam|adamw|\bstep \("),
    ("backward", r"\bbackward \("),
    ("tokenize (collator)", r"_timed_collator|tokenize|__call__ \(sentence_transformers/.*collator"),
    ("data (Ray shard, batching)", r"_language_rows|next_batch|iter_batches|_rows \("),
    ("forward (model + loss)", r"compute_loss|\bforward \("),
    ("evaluation / checkpoint", r"evaluate|save_model|_save_checkpoint"),
]


def summarise(path: str) -> tuple[Counter, Counter, int]:
    stages: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if "train_loop" not in stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        stage = next((name for name, pat in STAGES if re.search(pat, stack)), "other (trainer loop, hooks)")
        stages[stage] += n
        leaves[stack.rsplit(";", 1)[-1]] += n
    return stages, leaves, total


def main(paths: list[str]) -> None:
    for path in paths:
        stages, leaves, total = summarise(path)
        print(f"\n{path}: {total} samples of the training thread")
        for name, n in stages.most_common():
            print(f"  {100 * n / max(total, 1):5.1f}%  {name}")
        print("  top leaf frames:")
        for frame, n in leaves.most_common(12):
            print(f"  {100 * n / max(total, 1):5.1f}%  {frame[:140]}")


if __name__ == "__main__":
    main(sys.argv[1:])

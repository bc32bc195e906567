"""The run's final metrics: every rank's counters gathered (a collective), merged on each rank."""

from __future__ import annotations

from collections import Counter
from typing import Any


def gather_records(mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's record in rank order; a collective: every rank of the group must call it."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [mine]
    per_rank: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, mine)
    return per_rank


def merge_records(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-rank lists (rows, nodes, batching) and the rows per language summed over ranks."""
    return {
        "rows_per_rank": [r["rows"] for r in per_rank],
        "node_per_rank": [r["node"] for r in per_rank],
        "rows_per_language": dict(sum((Counter(r["per_language"]) for r in per_rank), Counter())),
        # (anchor, candidate) pairs masked as cross-rank false negatives, all ranks and steps
        "masked_duplicates": sum(r.get("masked_duplicates", 0) for r in per_rank),
        "batching_per_rank": [r["batching"] for r in per_rank],
        "peak_rss_mb_per_rank": [r.get("peak_rss_mb", 0.0) for r in per_rank],
        "fused_head_per_rank": [r.get("fused_head", False) for r in per_rank],
        "spent_per_rank": [r.get("spent", {}) for r in per_rank],
    }

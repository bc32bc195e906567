"""Rank logic under real gloo process groups (2 local processes, no Ray): the final gather of
counters and the language schedule every rank must follow in lockstep."""

from __future__ import annotations

from collections import Counter

from gloo import run_ranks

from sparse_ray.data.batches import scheduled_batches
from sparse_ray.worker.summary import gather_records, merge_records


def _gather(rank: int, world: int) -> dict:
    langs = {"python": 10 * (rank + 1), "go": rank}
    mine = {"rows": 100 + rank, "node": f"n{rank}", "per_language": langs, "batching": {"rank": rank}}
    return merge_records(gather_records(mine))


def test_final_counters_are_gathered_in_rank_order_and_summed_per_language():
    merged = run_ranks(_gather, 2)
    assert merged[0] == merged[1], "every rank reports the same merged metrics"
    assert merged[0]["rows_per_rank"] == [100, 101] and merged[0]["node_per_rank"] == ["n0", "n1"]
    assert merged[0]["rows_per_language"] == {"python": 30, "go": 1}
    assert merged[0]["batching_per_rank"] == [{"rank": 0}, {"rank": 1}]


def _schedule(rank: int, world: int, schedule: list[str]) -> list[tuple[str, int]]:
    import torch.distributed as dist

    # each rank has its own rows; rank 1's python rows repeat texts, so its batcher defers some
    rows = {
        lang: [
            {"anchor": f"{lang}-q{i // (2 if rank and lang == 'python' else 1)}", "positive": f"{lang}-{rank}-d{i}"}
            for i in range(40)
        ]
        for lang in ("python", "go")
    }
    stats: Counter = Counter()
    made = [
        (lang, len(batch)) for lang, batch in scheduled_batches(rows, schedule, 4, ("anchor", "positive"), True, stats)
    ]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, made)
    assert all(other == made for other in everyone), "ranks left lockstep"
    return [*made, ("deferred", stats["rows_deferred"])]


def test_every_rank_makes_the_same_batches_in_the_same_languages_despite_deferrals():
    schedule = ["python", "go", "python", "python", "go", "python"]
    per_rank = run_ranks(_schedule, 2, schedule)
    assert [lang for lang, _ in per_rank[0][:-1]] == schedule
    assert all(size == 4 for _, size in per_rank[0][:-1])
    assert per_rank[0][-1] == ("deferred", 0) and per_rank[1][-1][1] > 0

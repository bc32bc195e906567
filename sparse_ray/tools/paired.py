"""Per-query comparison of a model with its baselines: is the margin real or noise?

Each system ranks the whole corpus for every query; a query's nDCG@10 follows from the rank of
its relevant documents (binary relevance, as the evaluators score it). The margin of the model
over a baseline is the mean of the per-query differences, with a paired bootstrap over queries
(resample queries with replacement, ``resamples`` times, seeded): its 95 % interval and the
one-sided p-value (the share of resamples whose mean difference is ≤ 0).

Report contract (``report["paired"]``)::

    {"metric": "ndcg@10", "queries": N, "resamples": R,
     "per_system": {name: mean nDCG@10},
     "margins": {baseline: {"mean": d, "ci95": [lo, hi], "p_value": p}}}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sparse_ray import evaluate as ev

K = 10


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int = K) -> float:
    """Binary-relevance nDCG@k of one ranked list of ids."""
    gain = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return gain / ideal if ideal else 0.0


def per_query(task: ev.IRTask, top: Callable[[list[str], list[str]], list[list[int]]]) -> np.ndarray:
    """nDCG@10 per query (task order) of a system given as ``top(queries, documents)`` → the top-10
    document indices of each query."""
    doc_ids = list(task.corpus)
    hits = top(list(task.queries.values()), list(task.corpus.values()))
    return np.array(
        [ndcg_at_k([doc_ids[j] for j in row], task.relevant[q]) for q, row in zip(task.queries, hits, strict=True)]
    )


def _top_of(scores: Any) -> list[list[int]]:
    import torch

    return torch.topk(scores, k=min(K, scores.shape[1]), dim=1).indices.tolist()


def scored_top(scored: ev.Scored) -> Callable[[list[str], list[str]], list[list[int]]]:
    """A system already scored on the task (``evaluate.Scored``: the scores its metrics came from)."""

    def top(queries: list[str], docs: list[str]) -> list[list[int]]:
        assert scored.scores.shape == (len(queries), len(docs)), "scored on another task"
        return _top_of(scored.scores)

    return top


def bm25_top(tokenize: Callable[[str], list[str]]) -> Callable[[list[str], list[str]], list[list[int]]]:
    def top(queries: list[str], docs: list[str]) -> list[list[int]]:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index([tokenize(d) or ["_"] for d in docs], show_progress=False)
        k = min(K, len(docs))
        hits, _ = retriever.retrieve([tokenize(q) or ["_"] for q in queries], k=k, show_progress=False, n_threads=1)
        return [[int(j) for j in row] for row in hits]

    return top


def bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of mean(a − b) over queries: mean, 95 % interval, one-sided p (≤ 0)."""
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)], "p_value": float((means <= 0).mean())}


def compare(task: ev.IRTask, systems: dict[str, np.ndarray], model: str, resamples: int = 10_000) -> dict[str, Any]:
    """The report's ``paired`` section (module contract): ``model`` against every other system."""
    return {
        "metric": f"ndcg@{K}",
        "queries": len(task.queries),
        "resamples": resamples,
        "per_system": {name: float(s.mean()) for name, s in systems.items()},
        "margins": {name: bootstrap(systems[model], s, resamples) for name, s in systems.items() if name != model},
    }

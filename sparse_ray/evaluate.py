"""Retrieval and sparsity of a sparse encoder on hold-out rows (driver side, no process group).

Data contract: each hold-out row has ``anchor`` (the query), ``positive`` (its one relevant
document) and ``negative_1..k``; the corpus is every distinct positive and negative of the rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def rank_of_relevant(scores: torch.Tensor, relevant: list[int]) -> list[int]:
    """0-based rank of each query's relevant document (ties count against it)."""
    target = scores[torch.arange(len(relevant)), torch.tensor(relevant)]
    return ((scores >= target[:, None]).sum(dim=1) - 1).tolist()


def ranking_metrics(ranks: list[int], k: int = 10) -> dict[str, float]:
    """nDCG@k, MRR@k and Recall@k for one relevant document per query, from its 0-based rank."""
    n = max(len(ranks), 1)
    return {
        f"ndcg@{k}": sum(1 / math.log2(r + 2) for r in ranks if r < k) / n,
        f"mrr@{k}": sum(1 / (r + 1) for r in ranks if r < k) / n,
        f"recall@{k}": sum(1 for r in ranks if r < k) / n,
    }


def active_dims(embeddings: torch.Tensor) -> dict[str, float]:
    """Non-zero dimensions per vector: mean, median, max."""
    dense = embeddings.to_dense() if embeddings.is_sparse else embeddings
    counts = (dense != 0).sum(dim=1).float()
    if counts.numel() == 0:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": counts.mean().item(), "median": counts.median().item(), "max": counts.max().item()}


def corpus_of(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[int]]:
    """Queries, the distinct-document corpus, and each query's relevant document index."""
    index: dict[str, int] = {}
    for row in rows:
        for key in sorted(k for k in row if k == "positive" or k.startswith("negative_")):
            index.setdefault(row[key], len(index))
    return [r["anchor"] for r in rows], list(index), [index[r["positive"]] for r in rows]


def evaluate(model: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Retrieval metrics and active dimensions of ``model`` on hold-out ``rows``."""
    if not rows:
        return {}
    queries, corpus, relevant = corpus_of(rows)
    q = model.encode_query(queries, batch_size=batch_size, convert_to_tensor=True)
    d = model.encode_document(corpus, batch_size=batch_size, convert_to_tensor=True)
    scores = model.similarity(q, d)
    scores = scores.to_dense() if scores.is_sparse else scores
    metrics = ranking_metrics(rank_of_relevant(scores.float(), relevant))
    return {
        **metrics,
        "queries": len(queries),
        "corpus": len(corpus),
        "query_active_dims": active_dims(q),
        "document_active_dims": active_dims(d),
    }

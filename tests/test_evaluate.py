"""Retrieval metrics against hand-computed values on a tiny fixed ranking."""

from __future__ import annotations

import math

import pytest
import torch

from sparse_ray.evaluate import active_dims, corpus_of, rank_of_relevant, ranking_metrics


def test_ranks_and_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.4, 0.1]])
    ranks = rank_of_relevant(scores, [0, 1, 1])
    assert ranks == [0, 1, 1]  # tie in row 3 counts against the relevant document
    m = ranking_metrics(ranks, k=10)
    assert m["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall@10"] == 1.0
    assert ranking_metrics([0, 12], k=10)["recall@10"] == 0.5


def test_corpus_deduplicates_documents():
    rows = [
        {"anchor": "a", "positive": "p1", "negative_1": "n"},
        {"anchor": "b", "positive": "n", "negative_1": "p1"},
    ]
    queries, corpus, relevant = corpus_of(rows)
    assert queries == ["a", "b"] and sorted(corpus) == ["n", "p1"]
    assert [corpus[i] for i in relevant] == ["p1", "n"]


def test_active_dims():
    emb = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]).to_sparse()
    assert active_dims(emb) == {"mean": 1.5, "median": 1.0, "p90": pytest.approx(1.9), "max": 2.0}

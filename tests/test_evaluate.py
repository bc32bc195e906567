"""Evaluation helpers: the corpus of hold-out rows and active-dimension statistics."""

from __future__ import annotations

import pytest
import torch

from sparse_ray.evaluate import active_dims, corpus_of


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

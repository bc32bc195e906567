"""The exact scorer against dense arithmetic, and Seismic against the exact scorer (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import random as sparse_random

from sparse_ray.index import approximate
from sparse_ray.index.exact import ExactScorer
from sparse_ray.index.vectors import sparse_lists


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    matrix = sparse_random(3000, 5000, density=0.01, format="csr", dtype=np.float32, random_state=rng)
    matrix.data = (matrix.data * 3).astype(np.float32)
    return matrix.tocsr(), rng


def test_exact_scorer_equals_dense_dot_products_and_breaks_ties_by_row(corpus):
    matrix, rng = corpus
    scorer, dense = ExactScorer(matrix), matrix.toarray()
    for _ in range(20):
        ids = np.sort(rng.choice(5000, size=25, replace=False)).astype(np.int32)
        weights = rng.random(25).astype(np.float32)
        want = dense[:, ids] @ weights
        rows, scores = scorer.search(ids, weights, 10)
        np.testing.assert_allclose(scores, np.sort(want[want > 0])[::-1][:10], rtol=1e-5)
        np.testing.assert_allclose(want[rows], scores, rtol=1e-5)
    # three identical documents tie: the lower rows win, in order
    tied = ExactScorer(matrix[[5, 5, 5, 7]].tocsr())
    ids, weights = matrix[5].indices.astype(np.int32), np.ones(matrix[5].nnz, np.float32)
    assert list(tied.search(ids, weights, 2)[0]) == [0, 1]
    assert tied.search(np.array([], np.int32), np.array([], np.float32), 5)[0].size == 0


def test_sparse_lists_keep_only_positive_weights_in_token_order():
    dense = np.array([[0, 2.0, 0, 1.0], [0, 0, 0, 0], [3.0, 0, 0, 0]], dtype=np.float32)
    ids, weights = sparse_lists(dense)
    assert [list(i) for i in ids] == [[1, 3], [], [0]]
    assert [list(w) for w in weights] == [[2.0, 1.0], [], [3.0]]


def test_seismic_finds_what_the_exact_scorer_finds(corpus, tmp_path):
    matrix, rng = corpus
    built = approximate.build(matrix, tmp_path, approximate.BuildParams(n_postings=600))
    assert built["bytes"] > 0
    index, scorer = approximate.load(tmp_path), ExactScorer(matrix)
    params = approximate.SearchParams(query_cut=50, heap_factor=1.0)
    recalls = []
    for _ in range(30):
        row = int(rng.integers(matrix.shape[0]))
        ids, weights = matrix[row].indices.astype(np.int32), matrix[row].data
        want, want_scores = scorer.search(ids, weights, 10)
        got, got_scores = approximate.search(index, ids, weights, 10, params)
        recalls.append(len(set(want) & set(got)) / len(want))
        np.testing.assert_allclose(got_scores[:1], want_scores[:1], rtol=1e-3)  # itself first (Seismic: f16 values)
    assert np.mean(recalls) >= 0.95, recalls

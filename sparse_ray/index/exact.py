"""The reference scorer: exact dot-product top-k through the posting lists of a CSR matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


class ExactScorer:
    """Exact top-k by ``q · d`` over every document; ties go to the lower row (deterministic).

    The (docs × vocab) CSR matrix is kept as CSC: a column is a token's posting list, so a query
    touches only the postings of its own tokens.
    """

    def __init__(self, matrix: Any) -> None:
        self.rows = matrix
        self.postings = matrix.tocsc()
        self.postings.sort_indices()

    def scores(self, token_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The score of every document for one query (token ids and weights)."""
        p = self.postings
        starts, ends = p.indptr[token_ids], p.indptr[token_ids + 1]
        lengths = ends - starts
        if not lengths.sum():
            return np.zeros(p.shape[0], dtype=np.float32)
        first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)  # each posting's list start …
        take = first + np.arange(lengths.sum())  # … plus its place in the concatenation
        contrib = p.data[take] * np.repeat(weights.astype(np.float32), lengths)
        return np.bincount(p.indices[take], weights=contrib, minlength=p.shape[0]).astype(np.float32)

    def search(self, token_ids: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best documents with a positive score, best first."""
        scores = self.scores(token_ids, weights)
        hit = np.flatnonzero(scores > 0)
        if hit.size > k:
            hit = hit[np.argpartition(-scores[hit], k - 1)[:k]]
        order = hit[np.lexsort((hit, -scores[hit]))]
        return order, scores[order]

    def rescore(self, rows: np.ndarray, token_ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ``rows`` (e.g. Seismic's, whose stored values are rounded), re-sorted."""
        if not rows.size:
            return rows, np.zeros(0, dtype=np.float32)
        scores = np.asarray(self.rows[rows][:, token_ids] @ weights.astype(np.float32)).ravel().astype(np.float32)
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order]

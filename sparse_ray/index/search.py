"""``Index``: load an index directory, encode queries with its model, search, explain a hit.

Data contract: ``Index.load(path).search(queries, k)`` takes one string or a list and returns one
list of :class:`Hit` per query, best first, scores ``q · d`` of the model's sparse vectors.
``exact=True`` scores every document (the reference); otherwise Seismic answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_ray.index import approximate
from sparse_ray.index.exact import ExactScorer
from sparse_ray.index.vectors import Vectors, read_manifest, sparse_lists

QueryVector = tuple[np.ndarray, np.ndarray]  # (token ids, weights)


@dataclass(frozen=True)
class Hit:
    """One ranked document: where it came from, its text and its score for the query."""

    rank: int
    row: int
    doc_id: str
    score: float
    text: str
    path: str
    language: str


class StaticQueries:
    """The query side of an inference-free model without torch: tokenize, look up, keep > 0.

    Equal to ``SparseEncoder.encode_query`` for a query route that is one ``SparseStaticEmbedding``
    (every distinct token of the text, special tokens left out, gets its weight).
    """

    def __init__(self, tokenizer: Any, weight: np.ndarray) -> None:
        self.tokenizer, self.weight = tokenizer, weight

    @classmethod
    def of(cls, model: Any) -> StaticQueries | None:
        from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding

        router = model[0] if len(model) and isinstance(model[0], Router) else None
        route = list(router.sub_modules["query"]) if router is not None and "query" in router.sub_modules else []
        if len(route) != 1 or not isinstance(route[0], SparseStaticEmbedding) or model.prompts.get("query"):
            return None
        if getattr(model, "max_active_dims", None):
            return None
        return cls(route[0].tokenizer, route[0].weight.detach().float().numpy())

    def encode(self, query: str) -> QueryVector:
        ids = self.tokenizer(query, add_special_tokens=False, truncation=True)["input_ids"]
        ids = np.unique(np.asarray(ids, dtype=np.int32))
        weights = self.weight[ids]
        keep = weights > 0
        return ids[keep], weights[keep].astype(np.float32)


class Index:
    """An index directory in memory: its documents, the exact scorer and the Seismic index."""

    def __init__(self, path: str | Path, manifest: dict[str, Any], vectors: Vectors, approx: Any = None) -> None:
        self.path, self.manifest, self.vectors = Path(path), manifest, vectors
        self.exact = ExactScorer(vectors.matrix)
        self.approx = approx
        self.search_params = approximate.SearchParams(**manifest.get("search", {}))
        self._model: Any = None
        self._static: Any = None

    @classmethod
    def load(cls, path: str | Path) -> Index:
        manifest = read_manifest(path)
        vectors = Vectors.read(manifest["vectors"], manifest["vocab_size"])
        approx = approximate.load(path) if manifest.get("seismic") else None
        return cls(path, manifest, vectors, approx)

    @property
    def model(self) -> Any:
        """The SparseEncoder that encoded the documents (loaded on first use, on CPU)."""
        if self._model is None:
            from sparse_ray.model import load_sparse_encoder

            self._model = load_sparse_encoder(self.manifest["model"])
        return self._model

    def encode_queries(self, queries: list[str], batch_size: int = 32) -> list[QueryVector]:
        """Sparse query vectors; an inference-free model's need only its tokenizer and weight table."""
        if self._static is None:
            self._static = StaticQueries.of(self.model) or False
        if self._static:
            return [self._static.encode(q) for q in queries]
        dense = self.model.encode_query(queries, batch_size=batch_size, convert_to_sparse_tensor=False)
        ids, weights = sparse_lists(np.asarray(dense, dtype=np.float32))
        return list(zip(ids, weights, strict=True))

    def search(self, queries: str | list[str], k: int = 10, exact: bool = False) -> list[list[Hit]]:
        batch = [queries] if isinstance(queries, str) else list(queries)
        return [self.search_vector(q, k, exact) for q in self.encode_queries(batch)]

    def search_vector(self, query: QueryVector, k: int = 10, exact: bool = False) -> list[Hit]:
        token_ids, weights = query
        if exact or self.approx is None:
            rows, scores = self.exact.search(token_ids, weights, k)
        else:
            rows, _ = approximate.search(self.approx, token_ids, weights, k, self.search_params)
            rows, scores = self.exact.rescore(rows, token_ids, weights)
        v = self.vectors
        return [
            Hit(rank, int(r), v.doc_ids[r], float(s), v.texts[r], v.paths[r], v.languages[r])
            for rank, (r, s) in enumerate(zip(rows, scores, strict=True), start=1)
        ]

    def document_vector(self, row: int) -> QueryVector:
        m = self.vectors.matrix
        start, end = m.indptr[row], m.indptr[row + 1]
        return m.indices[start:end], m.data[start:end]

    def explain(self, query: QueryVector, hit: Hit, top: int = 10) -> list[tuple[str, float, float]]:
        """The tokens query and document share, by contribution ``q_t · d_t``: (token, q_t, d_t)."""
        q_ids, q_w = query
        d_ids, d_w = self.document_vector(hit.row)
        shared, qi, di = np.intersect1d(q_ids, d_ids, return_indices=True)
        order = np.argsort(-(q_w[qi] * d_w[di]), kind="stable")[:top]
        tokens = self.model.tokenizer.convert_ids_to_tokens([int(t) for t in shared[order]])
        return [(tok, float(q_w[qi[i]]), float(d_w[di[i]])) for tok, i in zip(tokens, order, strict=True)]

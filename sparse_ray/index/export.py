"""Exports of an index for serving elsewhere.

- Seismic / Anserini JSONL: ``{"id": doc_id, "content": text, "vector": {token: weight}}`` per line
  (Anserini's JsonVectorCollection; ``seismic.SeismicIndex.build`` reads the same).
- OpenSearch: ``mapping.json`` (a ``rank_features`` field ``tokens``, text and metadata) and
  ``documents.ndjson`` in the ``_bulk`` format. ``rank_features`` refuses dots in feature names, so
  ``.`` in a token is written as ``\\u2024`` (one dot leader) — on both sides, queries included.
- Inference-free models: ``query_tokens.json``, the query side's weight of every token, so a
  server scores a query by its tokenizer and this table alone (no transformer).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparse_ray.index.search import Index

DOT = "\u2024"


def feature_name(token: str) -> str:
    """A token as an OpenSearch ``rank_features`` key."""
    return token.replace(".", DOT)


def _vectors(index: Index) -> Iterator[tuple[int, dict[str, float]]]:
    vocab = index.model.tokenizer.convert_ids_to_tokens(list(range(index.manifest["vocab_size"])))
    for row in range(len(index.vectors.doc_ids)):
        ids, weights = index.document_vector(row)
        yield row, {vocab[int(t)]: round(float(w), 5) for t, w in zip(ids, weights, strict=True)}


def jsonl(index: Index, out: str | Path) -> int:
    """Write the Seismic / Anserini JSONL collection; returns the number of documents."""
    v, n = index.vectors, 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for row, vector in _vectors(index):
            fh.write(json.dumps({"id": v.doc_ids[row], "content": v.texts[row], "vector": vector}) + "\n")
            n += 1
    return n


def opensearch_mapping() -> dict[str, Any]:
    return {
        "mappings": {
            "properties": {
                "tokens": {"type": "rank_features"},
                "text": {"type": "text"},
                "path": {"type": "keyword"},
                "language": {"type": "keyword"},
            }
        }
    }


def opensearch(index: Index, out_dir: str | Path, index_name: str) -> int:
    """Write ``mapping.json`` and the ``_bulk`` body ``documents.ndjson``; returns the documents."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mapping.json").write_text(json.dumps(opensearch_mapping(), indent=2))
    v, n = index.vectors, 0
    with open(out / "documents.ndjson", "w") as fh:
        for row, vector in _vectors(index):
            fh.write(json.dumps({"index": {"_index": index_name, "_id": v.doc_ids[row]}}) + "\n")
            doc = {"text": v.texts[row], "path": v.paths[row], "language": v.languages[row]}
            doc["tokens"] = {feature_name(t): w for t, w in vector.items()}
            fh.write(json.dumps(doc) + "\n")
            n += 1
    return n


def query_tokens(model: Any) -> dict[str, float] | None:
    """Token → weight of an inference-free model's query side (``SparseStaticEmbedding``), else None."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    static = next((m for m in model.modules() if isinstance(m, SparseStaticEmbedding)), None)
    if static is None:
        return None
    tokens = static.tokenizer.convert_ids_to_tokens(list(range(static.weight.shape[0])))
    return {t: round(float(w), 6) for t, w in zip(tokens, static.weight.detach().tolist(), strict=True) if w > 0}

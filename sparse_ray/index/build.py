"""Building an index directory from encoded vectors: the manifest and the Seismic index."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sparse_ray.index import approximate
from sparse_ray.index.vectors import Vectors, skipped, write_manifest


def describe_model(model: Any) -> dict[str, Any]:
    """Vocabulary size and model type of a SparseEncoder (inference-free: a static query side)."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    free = any(isinstance(m, SparseStaticEmbedding) for m in model.modules())
    return {"vocab_size": len(model.tokenizer), "model_type": "inference_free_splade" if free else "splade"}


def build(
    index_dir: str | Path,
    model: str,
    vectors: str,
    model_info: dict[str, Any],
    encode: dict[str, Any],
    params: approximate.BuildParams | None,
) -> dict[str, Any]:
    """Read every vector back, build Seismic (unless ``params`` is None), write the manifest."""
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    docs = Vectors.read(vectors, model_info["vocab_size"])
    if len(set(docs.doc_ids)) != len(docs.doc_ids):
        raise AssertionError("a document was encoded twice: resume must never duplicate a doc id")
    nnz = docs.matrix.getnnz(axis=1)
    manifest: dict[str, Any] = {
        "model": str(Path(model).resolve()) if "://" not in model else model,
        **model_info,
        "vectors": vectors,
        "documents": len(docs.doc_ids),
        "skipped": skipped(vectors),
        "empty_vectors": int((nnz == 0).sum()),
        "document_active_dims": {"mean": float(nnz.mean()), "max": int(nnz.max())},
        "encode": encode,
        "read_s": time.perf_counter() - start,
        "seismic": approximate.build(docs.matrix, index_dir, params) if params else None,
        "search": vars(approximate.SearchParams()),
    }
    write_manifest(index_dir, manifest)
    return manifest

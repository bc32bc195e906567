"""The encoder replicas of an index job: Ray Data ``map_batches`` actors, one per GPU or CPU slot.

Input: corpus records (``data.corpus`` contract). Output: the same records with ``token_ids`` and
``weights`` (``index.vectors`` contract); skipped records pass through with empty vectors. The
document side of the model encodes (``encode_document``: the MLM side of an inference-free model),
through the fused SPLADE head where the model allows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from sparse_ray.index.vectors import SCHEMA, sparse_lists


class DocumentEncoder:
    """A SparseEncoder replica; called with a pyarrow batch of corpus records."""

    def __init__(self, model: str, batch_size: int, threads: int, fused: bool, max_seq_length: int | None) -> None:
        import ray
        import torch

        from sparse_ray.fused_head import use_fused_head
        from sparse_ray.model import load_sparse_encoder

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.model = load_sparse_encoder(model, device)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.fused = fused and use_fused_head(self.model) is None
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = batch.to_pylist()
        todo = [i for i, r in enumerate(records) if not r["skip"]]
        ids: list[Any] = [np.zeros(0, np.int32)] * len(records)
        weights: list[Any] = [np.zeros(0, np.float32)] * len(records)
        if todo:
            dense = self.model.encode_document(
                [records[i]["text"] for i in todo], batch_size=self.batch_size, convert_to_sparse_tensor=False
            )
            got_ids, got_weights = sparse_lists(dense.float().cpu().numpy())
            for i, t, w in zip(todo, got_ids, got_weights, strict=True):
                ids[i], weights[i] = t, w
        columns = {name: batch.column(name) for name in ("doc_id", "text", "language", "path", "skip")}
        columns["token_ids"] = pa.array(ids, type=SCHEMA.field("token_ids").type)
        columns["weights"] = pa.array(weights, type=SCHEMA.field("weights").type)
        return pa.table(columns, schema=SCHEMA)

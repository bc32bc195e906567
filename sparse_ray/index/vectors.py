"""The sparse-vector contract of an index directory, and its reading back as one CSR matrix.

An index directory ``INDEX/`` holds::

    vectors/*.parquet   one row per document (or any local / ``s3://`` location the manifest names):
                        doc_id (str, unique), text, language, path,
                        token_ids (list<int32>, strictly increasing), weights (list<float32>, > 0),
                        skip ("" or why the input line is no document: counted, never indexed)
    index.json          the manifest: model, model type, vocabulary size, counts, timings, parameters
    seismic.index.seismic   the approximate index (row numbers of the CSR matrix as Seismic doc ids)

Parquet parts are written by the encode job as it streams; a part that cannot be read back (a job
killed while writing it) is removed by :func:`readable_parts` and its documents are encoded again.
So one encode job at a time per vectors location: a second would delete the first's part in flight.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

VECTORS_DIR = "vectors"
MANIFEST = "index.json"
SEISMIC_STEM = "seismic"
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("path", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
        ("skip", pa.string()),
    ]
)


def sparse_lists(dense: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row of a (batch, vocab) weight matrix: the active token ids (increasing) and their weights."""
    rows, cols = np.nonzero(dense > 0)
    bounds = np.searchsorted(rows, np.arange(dense.shape[0] + 1))
    ids = [cols[a:b].astype(np.int32) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    weights = [dense[i, c].astype(np.float32) for i, c in enumerate(ids)]
    return ids, weights


def readable_parts(location: str) -> list[str]:
    """The Parquet parts under a vectors location (local or ``s3://``) that read back; unreadable
    ones (writes cut by a killed job) are deleted, so their documents are encoded again."""
    from sparse_ray.data.sources import filesystem

    fs, root = filesystem(location)
    if not fs.exists(root):
        return []
    parts = []
    for part in sorted(p for p in fs.find(root) if p.endswith(".parquet")):
        try:
            with fs.open(part, "rb") as fh:
                pq.ParquetFile(fh).metadata  # noqa: B018  (reads the footer: a cut file has none)
        except (pa.ArrowInvalid, OSError):
            fs.rm(part)
            continue
        parts.append(part)
    return parts


def _table(location: str, columns: list[str] | None = None) -> pa.Table:
    from sparse_ray.data.sources import filesystem

    fs, _ = filesystem(location)
    tables = []
    for part in readable_parts(location):
        with fs.open(part, "rb") as fh:
            tables.append(pq.read_table(fh, columns=columns, schema=None if columns else SCHEMA))
    return pa.concat_tables(tables).combine_chunks() if tables else SCHEMA.empty_table()


def encoded_ids(location: str) -> set[str]:
    """Doc ids already encoded under a vectors location (what a resumed encode job skips)."""
    table = _table(location, ["doc_id"])
    return set(table.column("doc_id").to_pylist()) if table.num_rows else set()


@dataclass
class Vectors:
    """Every document of a vectors location: ids, texts, metadata and a (docs × vocab) CSR matrix."""

    doc_ids: list[str]
    texts: list[str]
    languages: list[str]
    paths: list[str]
    matrix: Any  # scipy.sparse.csr_matrix, float32

    @classmethod
    def read(cls, location: str, vocab_size: int) -> Vectors:
        from scipy.sparse import csr_matrix

        table = _table(location)
        table = table.filter(pc.equal(table.column("skip"), "")).combine_chunks()
        if not table.num_rows:
            raise FileNotFoundError(f"no vectors under {location}")
        ids, weights = table.column("token_ids").chunk(0), table.column("weights").chunk(0)
        offsets = ids.offsets.to_numpy().astype(np.int64)
        assert (offsets == weights.offsets.to_numpy()).all(), "token_ids and weights differ in length"
        matrix = csr_matrix(
            (weights.flatten().to_numpy(), ids.flatten().to_numpy(), offsets - offsets[0]),
            shape=(table.num_rows, vocab_size),
        )
        return cls(
            doc_ids=table.column("doc_id").to_pylist(),
            texts=table.column("text").to_pylist(),
            languages=table.column("language").to_pylist(),
            paths=table.column("path").to_pylist(),
            matrix=matrix,
        )


def skipped(location: str) -> dict[str, int]:
    """Input lines that were no document, by reason."""
    reasons = _table(location, ["skip"]).column("skip").to_pylist()
    return dict(Counter(r for r in reasons if r))


def write_manifest(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    path = Path(index_dir) / MANIFEST
    path.with_suffix(".tmp").write_text(json.dumps(manifest, indent=2))
    path.with_suffix(".tmp").replace(path)


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{index_dir} is not an index (no {MANIFEST}); build one with `sparse-ray index`")
    return json.loads(path.read_text())

"""The approximate index: Seismic (``pyseismic-lsr``) over the rows of an index's CSR matrix.

Seismic keeps, per token, only the largest postings (``n_postings`` on average), groups them into
blocks with a summary vector each, and at query time skips blocks whose summary score is below
``heap_factor`` × the current k-th score, using only the query's ``query_cut`` largest weights. Doc ids
given to Seismic are the CSR row numbers as strings; components are token ids as strings.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_ray.index.vectors import SEISMIC_STEM


@dataclass(frozen=True)
class BuildParams:
    """Seismic's build knobs (its defaults suit ~1M-document corpora; see ``sparse-ray bench-search``)."""

    #: average number of postings kept per token (the rest are pruned)
    n_postings: int = 3500
    #: fraction of a posting list's documents used as block centroids
    centroid_fraction: float = 0.1
    #: fraction of a block's weight mass its summary keeps
    summary_energy: float = 0.4


@dataclass(frozen=True)
class SearchParams:
    """Seismic's query knobs: fewer query tokens and a larger heap factor are faster, less exact."""

    #: the query's largest weights used (the rest are ignored)
    query_cut: int = 20
    #: a block is skipped when its summary score is below heap_factor × the current k-th score: smaller
    #: scans more blocks (on the unseen set + 5K distractors: 0.7 → recall 0.998, 1.0 → 0.983 at cut 20)
    heap_factor: float = 0.9


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Seismic's Rust code prints progress on file descriptor 1; keep it off the console."""
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def build(matrix: Any, index_dir: str | Path, params: BuildParams) -> dict[str, Any]:
    """Build and save the Seismic index of ``matrix``'s rows; returns its build time and size."""
    from seismic import SeismicDataset, SeismicIndex

    start = time.perf_counter()
    dataset = SeismicDataset()
    offsets = matrix.indptr.astype(np.int64)
    ids = [str(i) for i in range(matrix.shape[0])]
    with quiet_stdout():
        dataset.add_documents_by_id(ids, matrix.indices.astype(np.int64), matrix.data.astype(np.float32), offsets)
        index = SeismicIndex.build_from_dataset(dataset, **asdict(params))
        stem = Path(index_dir) / SEISMIC_STEM
        index.save(str(stem))
    path = stem.with_name(stem.name + ".index.seismic")
    return {"build_s": time.perf_counter() - start, "bytes": path.stat().st_size, "params": asdict(params)}


def load(index_dir: str | Path) -> Any:
    from seismic import SeismicIndex

    with quiet_stdout():
        return SeismicIndex.load(str(Path(index_dir) / f"{SEISMIC_STEM}.index.seismic"))


def component_strings(token_ids: np.ndarray) -> np.ndarray:
    from seismic import get_seismic_string

    return np.array([str(int(t)) for t in token_ids], dtype=get_seismic_string())


def search(
    index: Any, token_ids: np.ndarray, weights: np.ndarray, k: int, params: SearchParams
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of Seismic's top ``k``, best first."""
    if not len(token_ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    found = index.search(
        "q", component_strings(token_ids), weights.astype(np.float32), k, params.query_cut, params.heap_factor
    )
    rows = np.array([int(doc) for _, _, doc in found], dtype=np.int64)
    return rows, np.array([score for _, score, _ in found], dtype=np.float32)

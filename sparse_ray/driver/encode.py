"""The encode job of ``sparse-ray index``: corpus → encoder actor pool → Parquet vectors.

Ray Data streams the corpus (CornStack-format shards, or functions extracted from a source tree),
``map_batches`` runs :class:`~sparse_ray.data.encode.DocumentEncoder` on an actor pool (one replica
per GPU, or per ``cpus_per_worker`` CPUs), and ``write_parquet`` streams the vectors to a local or
``s3://`` location: memory stays flat in corpus size. Resume is by doc id: documents already in a
readable part are filtered out of the read, so a re-run encodes only what is missing and never a
document twice. A killed encoder actor is restarted by Ray Data and its batch retried.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sparse_ray.data.sources import filesystem
from sparse_ray.driver.cluster import probe_address
from sparse_ray.driver.localray import init_in_process, use_local_ray_env
from sparse_ray.errors import UserError
from sparse_ray.index.vectors import encoded_ids


@dataclass(frozen=True)
class EncodeJob:
    """What one encode job runs; validated by :meth:`check`."""

    #: SparseEncoder directory (a run's model) the replicas load
    model: str
    #: where the Parquet vectors go (local directory or s3:// prefix)
    vectors: str
    #: encoder replicas (Ray actors)
    workers: int = 1
    #: GPUs per replica (0: CPU replicas)
    gpus_per_worker: float = 0
    #: CPUs per replica (torch threads of a CPU replica)
    cpus_per_worker: int = 1
    #: documents per encoder forward pass (and per Ray Data batch: 4 ×)
    batch_size: int = 32
    #: the fused SPLADE head where the model allows it (same vectors, less memory)
    fused: bool = True
    #: token limit of documents (None: the model's)
    max_seq_length: int | None = None
    #: Ray cluster to join (None: $RAY_ADDRESS, else a local one)
    address: str | None = None

    def check(self) -> None:
        if self.workers < 1 or self.cpus_per_worker < 1 or self.batch_size < 1 or self.gpus_per_worker < 0:
            raise UserError("--workers, --cpus-per-worker and --batch-size must be ≥ 1, --gpus-per-worker ≥ 0")


def connect(job: EncodeJob) -> None:
    """Join the given cluster or start a local one with room for the replicas and the reads."""
    import os

    import ray

    if ray.is_initialized():
        return
    address = job.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        probe_address(address)
        ray.init(address=address, **kwargs)
        return
    use_local_ray_env()
    init_in_process(max(4, job.workers * job.cpus_per_worker + 1), **kwargs)


def corpus_dataset(files: list[str], language: str, root: str) -> Any:
    import ray

    from sparse_ray.data.corpus import CorpusDatasource

    fs, _ = filesystem(root)
    return ray.data.read_datasource(CorpusDatasource(files, language, filesystem=fs))


def items_dataset(items: list[dict[str, str]]) -> Any:
    import ray

    return ray.data.from_items(items)


def _drop_done(batch: Any, done: Any) -> Any:
    """``batch`` without the doc ids in ``done`` (a pyarrow string array, built once per job)."""
    import pyarrow.compute as pc

    return batch.filter(pc.invert(pc.is_in(batch.column("doc_id"), value_set=done)))


def run(job: EncodeJob, corpus: Any) -> dict[str, Any]:
    """Encode what ``corpus`` (a Ray Dataset of corpus records) holds that ``job.vectors`` lacks."""
    from sparse_ray.data.encode import DocumentEncoder

    job.check()
    done = frozenset(encoded_ids(job.vectors))
    if done:
        import pyarrow as pa

        corpus = corpus.map_batches(_drop_done, fn_kwargs={"done": pa.array(sorted(done))}, batch_format="pyarrow")
    encoded = corpus.map_batches(
        DocumentEncoder,
        fn_constructor_kwargs={
            "model": job.model,
            "batch_size": job.batch_size,
            "threads": job.cpus_per_worker,
            "fused": job.fused,
            "max_seq_length": job.max_seq_length,
        },
        batch_size=4 * job.batch_size,
        batch_format="pyarrow",
        concurrency=job.workers,
        num_cpus=job.cpus_per_worker,
        num_gpus=job.gpus_per_worker or None,
    )
    fs, root = filesystem(job.vectors)
    start = time.perf_counter()
    encoded.write_parquet(root, filesystem=fs, min_rows_per_file=4 * job.batch_size)
    seconds = time.perf_counter() - start
    total = len(encoded_ids(job.vectors))
    new = total - len(done)
    return {
        "documents": total,
        "encoded_now": new,
        "resumed_from": len(done),
        "seconds": seconds,
        "docs_per_s": new / seconds if seconds else None,
        "workers": job.workers,
    }

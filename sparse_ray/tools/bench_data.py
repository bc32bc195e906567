"""``sparse-ray bench-data``: the data pipeline alone at 10K, 100K and 1M rows, in one run.

    sparse-ray bench-data [--rows 10000,100000,1000000] [--negatives 7] [--repeats 3] \\
        [--work /tmp/sparse-ray-scale] [--out benchmarks/results] [--consume ROWS_PER_S]

Driver side. For each size it writes CornStack-format shards (``shard-NNNNN.jsonl.gz``, at most
100K rows each, texts taken from the bundled samples of all nine languages and made unique per
row), then measures, in a fresh driver process with its own local Ray cluster, what a training
run does with the data:

- the driver's count pass over every shard (all read tasks, pipeline start-up included);
- one read task alone: ``CornStackDatasource`` parsing one shard in a Ray task (rows/s per read
  worker);
- the training path of two workers: the train split through ``streaming_split(2, equal=True)`` as
  Ray Train does, each consumer shuffling locally and forming deduplicated batches
  (``batches.Batcher``): rows/s per consumer;
- peak private memory (USS) and peak RSS of the driver, the read task and each consumer.

Memory must stay flat from 100K to 1M rows (streaming, nothing held): the JSON records the ratios.
Throughput is compared with what a training worker consumes (``--consume``, rows/s; default: the
``w1_zero2`` samples/s of the newest ``sparse-ray bench`` JSON in ``--out``).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sparse_ray.console import console
from sparse_ray.tools.build import METADATA

ROWS_PER_SHARD = 100_000
TEXT_CHARS = 400


def _pool() -> dict[str, list[str]]:
    """Real queries and functions from every bundled sample."""
    from sparse_ray.data.sources import SAMPLE_DIR

    queries, docs = [], []
    for shard in sorted(SAMPLE_DIR.glob("*/shard-*.jsonl.gz")):
        for line in gzip.open(shard, "rt"):
            row = json.loads(line)
            queries.append(row["query"])
            docs.append(row["document"][:TEXT_CHARS])
    return {"queries": queries, "docs": docs}


def generate(rows: int, folder: Path, negatives: int, seed: int = 0) -> list[Path]:
    """CornStack-format shards of ``rows`` rows under ``folder`` (reused when already complete)."""
    done = folder / "COMPLETE"
    if done.exists():
        return sorted(folder.glob("shard-*.jsonl.gz"))
    folder.mkdir(parents=True, exist_ok=True)
    pool, rng = _pool(), random.Random(seed)
    paths = []
    for n, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
        path = folder / f"shard-{n:05d}.jsonl.gz"
        with gzip.open(path, "wt", compresslevel=1) as fh:
            for i in range(start, min(rows, start + ROWS_PER_SHARD)):
                docs = rng.sample(pool["docs"], negatives + 1)
                scores = sorted((round(rng.random(), 4) for _ in range(negatives)), reverse=True)
                row = {
                    "query": f"{rng.choice(pool['queries'])} (variant {i})",
                    "document": f"{docs[0]}\n// row {i}",
                    "negatives": [f"{d}\n// negative {i}.{j}" for j, d in enumerate(docs[1:])],
                    "negative_scores": scores,
                    "document_score": 1.0,
                    "document_rank": 0,
                    "metadata": METADATA,
                }
                fh.write(json.dumps(row) + "\n")
        paths.append(path)
    done.write_text(str(rows))
    return paths


class PeakMemory:
    """Peak private memory (USS: pages only this process holds) and peak RSS, sampled every 0.1 s.

    RSS alone misleads here: pages of Ray's shared object store that a process maps count in its RSS,
    so it grows with the number of blocks a process has touched, not with what it holds.
    """

    def __init__(self) -> None:
        import psutil

        self.proc, self.uss, self.rss = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        info = self.proc.memory_full_info()
        self.uss, self.rss = max(self.uss, info.uss), max(self.rss, info.rss)

    def to_dict(self) -> dict[str, float]:
        return {"peak_uss_mb": self.uss / 2**20, "peak_rss_mb": self.rss / 2**20}


def read_one_shard(path: str, rules: Any) -> dict[str, float]:
    """What one Ray Data read task of ``CornStackDatasource`` does with one shard, timed alone."""
    import pyarrow.fs

    from sparse_ray.data.cornstack import read_records

    with PeakMemory() as mem:
        started, rows = time.perf_counter(), 0
        with pyarrow.fs.LocalFileSystem().open_input_stream(path, compression=None) as fh:
            for block in read_records(fh, rules, gzipped=True):
                rows += block.num_rows
        seconds = time.perf_counter() - started
    return {"rows": rows, "rows_per_s": rows / seconds, **mem.to_dict()}


def _consume(shard: Any, batch: int, buffer: int, seed: int) -> dict[str, float]:
    """What a training worker does with its shard, minus the model: rows → deduplicated batches."""
    from sparse_ray.data.batches import Batcher
    from sparse_ray.data.pipeline import columns

    cols = tuple(columns(1))

    def rows() -> Any:
        for block in shard.iter_batches(
            batch_size=256, batch_format="pyarrow", local_shuffle_buffer_size=buffer, local_shuffle_seed=seed
        ):
            yield from block.select(list(cols)).to_pylist()

    stats: Counter = Counter()
    with PeakMemory() as mem:
        stream = rows()
        next(stream)  # pipeline start-up is not throughput
        started, count = time.perf_counter(), 1
        batcher = Batcher(stream, batch, cols, True, stats)
        while len(made := batcher.next_batch()) == batch:
            count += batch
        count += len(made)  # the tail: the stream ended inside a batch
        seconds = time.perf_counter() - started
    return {"rows": count, "rows_per_s": count / seconds, **mem.to_dict(), **stats}


def measure(folder: str, batch: int = 8, buffer: int = 1000) -> dict[str, Any]:
    """One size, in this process: what the driver of a training run does with the data (the count
    pass, then two consumers of the training split), one read task alone, and peak memory."""
    import ray

    from sparse_ray.config import load_config
    from sparse_ray.data import pipeline, sources
    from sparse_ray.driver.quiet import quiet_ray

    with PeakMemory() as driver:
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
        quiet_ray()
        try:
            cfg = load_config("quick_test", [f"data.path={folder}", "data.max_samples=null"])
            found = sources.resolve_sources(cfg)
            ds = pipeline.read(cfg, found)
            started = time.perf_counter()
            stats = pipeline.count(ds)  # every read task, start-up included
            count_s = time.perf_counter() - started
            one = ray.remote(num_cpus=1)(read_one_shard)
            read = ray.get(one.remote(found[0].files[0], pipeline.row_rules(cfg, "python")))
            shards = pipeline.split_rows(ds, "train", 1).streaming_split(2, equal=True)
            consumer = ray.remote(num_cpus=1)(_consume)
            consumers = ray.get([consumer.remote(s, batch, buffer, i) for i, s in enumerate(shards)])
        finally:
            ray.shutdown()
    rows = stats.read["python"]
    return {
        "rows": rows,
        "count_pass_rows_per_s": rows / count_s,
        "read_task": read,
        "consumers": consumers,
        "driver": driver.to_dict(),
    }


def bench_data(sizes: list[int], negatives: int, repeats: int, work: Path, out: Path, consume: float | None) -> dict:
    """Every size ``repeats`` times, each measurement in a fresh driver process."""
    consume = consume or _trainer_rows_per_s(out)
    runs: dict[str, list[dict[str, Any]]] = {}
    for size in sizes:
        folder = work / f"rows-{size}" / "python"
        started = time.perf_counter()
        generate(size, folder, negatives)
        console.print(f"{size} rows ready in {folder} ({time.perf_counter() - started:.0f}s)")
    for repeat in range(repeats):
        for size in sizes:
            console.print(f"[bold]repeat {repeat + 1}/{repeats}[/]: {size} rows")
            runs.setdefault(str(size), []).append(_measure_in_subprocess(work / f"rows-{size}"))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "sparse-ray bench-data " + " ".join(sys.argv[2:]),
        "trainer_rows_per_s": consume,
        "runs": runs,
        "summary": summarise(runs, consume),
    }
    path = out / f"data-scale-cpu{os.cpu_count()}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {path}")
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], consume: float | None) -> dict[str, Any]:
    """Medians per size, the memory ratios of the two largest sizes, and the throughput headroom."""

    med = {}
    for size, results in runs.items():

        def median(get: Any, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(get(r) for r in results)

        m = {
            "read_rows_per_s_one_task": median(lambda r: r["read_task"]["rows_per_s"]),
            "count_pass_rows_per_s": median(lambda r: r["count_pass_rows_per_s"]),
            "consumer_rows_per_s": median(lambda r: min(c["rows_per_s"] for c in r["consumers"])),
        }
        for kind in ("uss", "rss"):
            m[f"driver_peak_{kind}_mb"] = median(lambda r, k=kind: r["driver"][f"peak_{k}_mb"])
            m[f"consumer_peak_{kind}_mb"] = median(lambda r, k=kind: max(c[f"peak_{k}_mb"] for c in r["consumers"]))
            m[f"read_task_peak_{kind}_mb"] = median(lambda r, k=kind: r["read_task"][f"peak_{k}_mb"])
        if consume:
            m["headroom_one_read_task"] = m["read_rows_per_s_one_task"] / consume
            m["headroom_consumer"] = m["consumer_rows_per_s"] / consume
        med[size] = m
    out: dict[str, Any] = {"per_size": med}
    sizes = sorted(med, key=int)
    if len(sizes) >= 2:
        small, large = med[sizes[-2]], med[sizes[-1]]
        out[f"memory_ratio_{sizes[-1]}_vs_{sizes[-2]}"] = {
            f"{who}_{kind}": large[f"{who}_peak_{kind}_mb"] / small[f"{who}_peak_{kind}_mb"]
            for who in ("driver", "consumer")
            for kind in ("uss", "rss")
        }
    return out


def _measure_in_subprocess(folder: Path) -> dict[str, Any]:
    call = f"measure({str(folder)!r})"
    code = f"import json; from sparse_ray.tools.bench_data import measure; print('RESULT', json.dumps({call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"measurement of {folder} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[len("RESULT ") :])


def _trainer_rows_per_s(out: Path) -> float | None:
    """Samples/s of one training worker from the newest ``sparse-ray bench`` result, if any."""
    found = sorted(out.glob("cpu*-*.json"))
    if not found:
        return None
    summary = json.loads(found[-1].read_text())["summary"]
    return summary.get("w1_zero2", {}).get("samples_per_s", {}).get("median")

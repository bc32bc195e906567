"""``sparse-ray bench-data``: the data pipeline alone at 10K, 100K and 1M rows, in one run.

    sparse-ray bench-data [--rows 10000,100000,1000000] [--negatives 7] [--repeats 3] \\
        [--work /tmp/sparse-ray-scale] [--out benchmarks/results]

Driver side. For each size it writes CornStack-format shards (``shard-NNNNN.jsonl.gz``, at most
100K rows each, texts taken from the bundled samples of all nine languages and made unique per
row), then runs, in a fresh driver process with its own local Ray cluster:

- ``read``: one read task at a time parses every shard (``CornStackDatasource``) and a consumer
  counts the rows: rows/s of one read worker;
- ``train``: the training path of two workers (the train split, ``streaming_split(2, equal=True)``
  as Ray Train does, each consumer shuffling locally and forming deduplicated batches with
  ``batches.Batcher``): rows/s per consumer and each consumer's peak RSS;
- the driver's peak RSS over both.

Memory must stay flat from 100K to 1M rows (streaming, nothing held): the JSON records the ratio.
Throughput is compared with what a training worker consumes (``--consume``, rows/s; default: the
``w1_zero2`` samples/s of the newest ``sparse-ray bench`` JSON in ``--out``).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sparse_ray.build import METADATA
from sparse_ray.console import console

ROWS_PER_SHARD = 100_000
TEXT_CHARS = 400


def _pool() -> dict[str, list[str]]:
    """Real queries and functions from every bundled sample."""
    from sparse_ray.data import SAMPLE_DIR

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _consume(shard: Any, batch: int, buffer: int, seed: int) -> dict[str, float]:
    """What a training worker does with its shard, minus the model: rows → deduplicated batches."""
    from sparse_ray.batches import Batcher
    from sparse_ray.data import columns

    cols = tuple(columns(1))

    def rows() -> Any:
        for block in shard.iter_batches(
            batch_size=256, batch_format="pyarrow", local_shuffle_buffer_size=buffer, local_shuffle_seed=seed
        ):
            yield from block.select(list(cols)).to_pylist()

    stats: Counter = Counter()
    stream = rows()
    first = next(stream)  # pipeline start-up is not throughput
    started, count = time.perf_counter(), 1
    batcher = Batcher(stream, batch, cols, True, stats)
    while True:
        try:
            count += len(batcher.next_batch())
        except AssertionError:  # the stream ran out inside a batch: the tail is not a whole batch
            break
    del first
    seconds = time.perf_counter() - started
    return {"rows": count, "rows_per_s": count / seconds, "peak_rss_mb": peak_rss_mb(), **stats}


def measure(folder: str, batch: int = 8, buffer: int = 1000) -> dict[str, Any]:
    """One size, in this process: read throughput, training-path throughput, peak memory."""
    import ray

    from sparse_ray import data
    from sparse_ray.config import load_config
    from sparse_ray.launch import quiet_ray_data

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    quiet_ray_data()
    try:
        cfg = load_config("quick_test", [f"data.path={folder}", "data.max_samples=null"])
        sources = data.resolve_sources(cfg)
        ds = data.read(cfg, sources)

        rows, read_s = _drain(ds)
        one_rows, one_s = _drain(data.read_languages(cfg, sources, concurrency=1)["python"])
        train = data.split_rows(ds, "train", 1)
        shards = train.streaming_split(2, equal=True)
        consumer = ray.remote(num_cpus=1)(_consume)
        results = ray.get([consumer.remote(s, batch, buffer, i) for i, s in enumerate(shards)])
        return {
            "rows": rows,
            "read_rows_per_s_all_tasks": rows / read_s,  # parsed records (valid or not) per second
            "read_rows_per_s_one_task": one_rows / one_s,
            "consumers": results,
            "driver_peak_rss_mb": peak_rss_mb(),
        }
    finally:
        ray.shutdown()


def _drain(ds: Any) -> tuple[int, float]:
    """Records read after the first block (pipeline start-up is not throughput), and the seconds."""
    rows, started = 0, None
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if started is None:
            started = time.perf_counter()
            continue
        rows += block.num_rows
    return rows, time.perf_counter() - (started or time.perf_counter())


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
    """Medians per size, and the 1M-vs-100K memory ratios and throughput headroom."""
    med = {}
    for size, results in runs.items():
        med[size] = {
            "read_rows_per_s_one_task": statistics.median(r["read_rows_per_s_one_task"] for r in results),
            "read_rows_per_s_all_tasks": statistics.median(r["read_rows_per_s_all_tasks"] for r in results),
            "consumer_rows_per_s": statistics.median(c["rows_per_s"] for r in results for c in r["consumers"]),
            "driver_peak_rss_mb": statistics.median(r["driver_peak_rss_mb"] for r in results),
            "consumer_peak_rss_mb": statistics.median(max(c["peak_rss_mb"] for c in r["consumers"]) for r in results),
        }
        if consume:
            med[size]["headroom_one_read_task"] = med[size]["read_rows_per_s_one_task"] / consume
            med[size]["headroom_consumer"] = med[size]["consumer_rows_per_s"] / consume
    out: dict[str, Any] = {"per_size": med}
    sizes = sorted(med, key=int)
    if len(sizes) >= 2:
        small, large = med[sizes[-2]], med[sizes[-1]]
        out[f"memory_ratio_{sizes[-1]}_vs_{sizes[-2]}"] = {
            "driver": large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"],
            "consumer": large["consumer_peak_rss_mb"] / small["consumer_peak_rss_mb"],
        }
    return out


def _measure_in_subprocess(folder: Path) -> dict[str, Any]:
    code = f"import json; from sparse_ray.scale import measure; print('RESULT', json.dumps(measure({str(folder)!r})))"
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

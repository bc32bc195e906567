"""``sparse-ray bench-search``: encode, index and search a code corpus; the trained model against
BM25-code and dense MiniLM on the same corpus and queries, side by side in one run.

    sparse-ray bench-search MODEL_OR_RUN [--distractors 100000] [--distractor-src DIR ...] \\
        [--unseen sparse_ray/sample/unseen] [--workers 2] [--dense minilm] [--out benchmarks/results]

Corpus: the unseen set's functions (its queries' relevant documents) plus ``--distractors``
documented functions extracted from source trees (default: this Python's site-packages without the
unseen set's libraries; texts equal to an unseen document are dropped). Measured, in this order:

- encode: docs/s of the Ray Data encode job on a fixed 512-document slice with 1 and 2 replicas
  (scaling), then the whole corpus with ``--workers`` replicas;
- Seismic build time and size; query encoding latency (one query, one thread) of the model and of
  an inference-free model on the same base (its query side is a token-weight lookup);
- search, one thread, one query at a time, every unseen query: p50/p99 latency and QPS of Seismic
  (every ``query_cut`` × ``heap_factor`` of a grid, with recall@10 against the exact scorer's top 10,
  ``recall@10_vs_exact``; the fastest setting with ≥ 0.99 is reported), of the exact scorer and of
  bm25s (tokenisation included: it is part of a BM25 query);
- quality on the whole corpus: nDCG@10, MRR@10, Recall@100 for the model (exact and Seismic),
  BM25-code and dense MiniLM (exact cosine over every document).

JSON goes to ``<out>/<machine>-<date>-search.json``; a rich table is printed.
"""

from __future__ import annotations

import json
import platform
import site
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sparse_ray import evaluate as ev
from sparse_ray.console import console
from sparse_ray.index import approximate
from sparse_ray.index.build import build, describe_model
from sparse_ray.index.search import Index, StaticQueries

#: libraries the unseen set was built from: never distractors
UNSEEN_LIBRARIES = ("rich", "click", "fsspec", "yaml", "_yaml")
GRID_CUTS = (5, 10, 20, 40)
GRID_HEAPS = (0.7, 0.8, 0.9, 1.0)
SCALING_DOCS = 512


def distractor_roots() -> list[Path]:
    """Package directories of this Python's site-packages, the unseen set's libraries left out."""
    roots = []
    for sp in site.getsitepackages():
        for entry in sorted(Path(sp).iterdir()):
            if entry.is_dir() and not entry.name.endswith("-info") and entry.name not in UNSEEN_LIBRARIES:
                roots.append(entry)
    return roots


def distractors(n: int, roots: list[Path], exclude: set[str]) -> list[dict[str, str]]:
    """Up to ``n`` documented functions (corpus records) from ``roots``, none equal to ``exclude``."""
    from sparse_ray.errors import UserError
    from sparse_ray.tools.serve import source_items

    items, seen = [], set(exclude)
    for root in roots:
        try:
            found = source_items("python", str(root))
        except UserError:
            continue
        for item in found:
            if item["text"] not in seen:
                seen.add(item["text"])
                items.append({**item, "doc_id": f"{root.name}/{item['doc_id']}", "path": f"{root.name}/{item['path']}"})
        if len(items) >= n:
            break
    return items[:n]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    us = np.array(seconds) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "qps_one_thread": float(1e6 / us.mean()),
    }


def _timed(fn: Any, items: list[Any]) -> tuple[list[Any], dict[str, float]]:
    out, seconds = [], []
    for item in items:
        start = time.perf_counter()
        out.append(fn(item))
        seconds.append(time.perf_counter() - start)
    return out, _percentiles(seconds)


def encode(model_dir: str, items: list[dict[str, str]], vectors: str, workers: int, seq: int | None) -> dict:
    from sparse_ray.driver import encode as job
    from sparse_ray.driver.quiet import quiet_ray

    spec = job.EncodeJob(model=model_dir, vectors=vectors, workers=workers, batch_size=16, max_seq_length=seq)
    job.connect(spec)
    quiet_ray()
    return job.run(spec, job.items_dataset(items))


def grid(idx: Index, queries: list[Any], exact: list[set[int]]) -> list[dict[str, Any]]:
    """Recall@10 against the exact top 10 and latency of Seismic for every grid setting."""
    rows = []
    for cut in GRID_CUTS:
        for heap in GRID_HEAPS:
            idx.search_params = approximate.SearchParams(query_cut=cut, heap_factor=heap)
            hits, lat = _timed(lambda q: idx.search_vector(q, 10), queries)
            recall = [
                len({h.row for h in got} & want) / max(1, len(want)) for got, want in zip(hits, exact, strict=True)
            ]
            rows.append({"query_cut": cut, "heap_factor": heap, "recall@10_vs_exact": float(np.mean(recall)), **lat})
    return rows


def _metrics(task: ev.IRTask, results: list[list[dict[str, Any]]]) -> dict[str, float]:
    return ev._normalise(ev.sparse_evaluator(task).compute_metrics(results))


def _results(idx: Index, ranked: list[list[Any]]) -> list[list[dict[str, Any]]]:
    return [[{"corpus_id": h.doc_id, "score": h.score} for h in hits] for hits in ranked]


def bm25(task: ev.IRTask, queries: list[str]) -> dict[str, Any]:
    import bm25s

    from sparse_ray.tools.build import code_tokens

    ids = list(task.corpus)
    start = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index([code_tokens(task.corpus[i]) or ["_"] for i in ids], show_progress=False)
    built = time.perf_counter() - start

    def one(q: str) -> list[dict[str, Any]]:
        hits, scores = retriever.retrieve([code_tokens(q) or ["_"]], k=100, show_progress=False, n_threads=1)
        return [{"corpus_id": ids[int(j)], "score": float(s)} for j, s in zip(hits[0], scores[0], strict=True)]

    results, lat = _timed(one, queries)
    return {"build_s": built, **lat, **_metrics(task, results)}


def dense(model: str, task: ev.IRTask, queries: list[str]) -> dict[str, Any]:
    """Exact cosine search of a dense SentenceTransformer over the whole corpus."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    ids = list(task.corpus)
    start = time.perf_counter()
    docs = st.encode([task.corpus[i] for i in ids], batch_size=32, normalize_embeddings=True)
    encode_s = time.perf_counter() - start
    q = st.encode(queries, batch_size=32, normalize_embeddings=True)
    scores = q @ docs.T
    top = np.argsort(-scores, axis=1)[:, :100]
    results = [[{"corpus_id": ids[j], "score": float(scores[i, j])} for j in row] for i, row in enumerate(top)]
    return {"encode_docs_per_s": len(ids) / encode_s, **_metrics(task, results)}


def query_encoding(model: Any, queries: list[str]) -> dict[str, float]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.encode_query(queries[:5])  # warm-up
        _, lat = _timed(lambda q: model.encode_query([q], convert_to_sparse_tensor=False), queries[:200])
    finally:
        torch.set_num_threads(threads)
    return lat


def bench_search(
    model: str, unseen: str, n: int, roots: list[Path], workers: int, dense_model: str | None, out: Path
) -> dict[str, Any]:
    from sparse_ray.config import loadable_model
    from sparse_ray.model import build_model
    from sparse_ray.tools.serve import load_encoder

    model_dir, encoder = load_encoder(model)
    rows = ev.read_rows(unseen, "python")
    base = ev.IRTask.from_rows(rows)
    queries_text = list(base.queries.values())
    unseen_items = [
        {"doc_id": d, "text": t, "language": "python", "path": "unseen", "skip": ""} for d, t in base.corpus.items()
    ]
    extra = distractors(n, roots, set(base.corpus.values()))
    items = unseen_items + extra
    task = ev.IRTask(base.queries, {i["doc_id"]: i["text"] for i in items}, base.relevant)
    console.print(
        f"corpus: {len(unseen_items)} unseen + {len(extra)} distractor functions; {len(queries_text)} queries"
    )
    result: dict[str, Any] = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "model": model_dir}
    result["corpus"] = {"unseen": len(unseen_items), "distractors": len(extra), "queries": len(queries_text)}
    with tempfile.TemporaryDirectory() as work:
        scaling = {w: encode(model_dir, items[:SCALING_DOCS], f"{work}/s{w}", w, None) for w in (1, 2)}
        result["encode_scaling"] = {
            "docs": SCALING_DOCS,
            **{f"w{w}_docs_per_s": s["docs_per_s"] for w, s in scaling.items()},
            "ratio_2_vs_1": scaling[2]["docs_per_s"] / scaling[1]["docs_per_s"],
        }
        index_dir = Path(work) / "index"
        stats = encode(model_dir, items, str(index_dir / "vectors"), workers, None)
        manifest = build(
            index_dir, model_dir, str(index_dir / "vectors"), describe_model(encoder), stats, approximate.BuildParams()
        )
        result["encode"], result["seismic"] = stats, manifest["seismic"]
        result["document_active_dims"] = manifest["document_active_dims"]
        idx = Index.load(index_dir)
        idx._model = encoder
        vectors = idx.encode_queries(queries_text)
        result["query_active_dims"] = float(np.mean([len(v[0]) for v in vectors]))
        result["query_encoding"] = {"model": query_encoding(encoder, queries_text)}
        free = build_model("inference_free_splade", loadable_model("minilm"), 256)
        result["query_encoding"]["inference_free_same_base"] = query_encoding(free, queries_text)
        _, lat = _timed(StaticQueries.of(free).encode, queries_text)
        result["query_encoding"]["inference_free_index_path"] = lat
        exact_hits, exact_lat = _timed(lambda q: idx.search_vector(q, 100, exact=True), vectors)
        result["exact"] = {**exact_lat, **_metrics(task, _results(idx, exact_hits))}
        result["seismic_grid"] = grid(idx, vectors, [{h.row for h in hits[:10]} for hits in exact_hits])
        good = [r for r in result["seismic_grid"] if r["recall@10_vs_exact"] >= 0.99] or result["seismic_grid"]
        best = min(good, key=lambda r: r["p50_us"])
        idx.search_params = approximate.SearchParams(best["query_cut"], best["heap_factor"])
        result["seismic_best"] = {**best, **_metrics(task, _results(idx, [idx.search_vector(q, 100) for q in vectors]))}
    result["bm25_code"] = bm25(task, queries_text)
    if dense_model:
        result["dense"] = {"model": dense_model, **dense(loadable_model(dense_model), task, queries_text)}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['machine']}-{result['date']}-search.json"
    path.write_text(json.dumps(result, indent=2))
    result["path"] = str(path)
    return result


def search_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"bench-search: {result['corpus']}", header_style="bold")
    for col in ("system", "nDCG@10", "Recall@100", "p50 µs", "p99 µs", "QPS (1 thread)"):
        table.add_column(col, justify="left" if col == "system" else "right")
    best = result["seismic_best"]
    rows = [
        (
            f"seismic (cut {best['query_cut']}, heap {best['heap_factor']}, {best['recall@10_vs_exact']:.3f} of exact)",
            best,
        ),
        ("exact posting lists", result["exact"]),
        ("bm25s, code tokens", result["bm25_code"]),
    ]
    if "dense" in result:
        rows.append((f"dense {result['dense']['model']} (exact cosine)", {**result["dense"]}))
    for name, r in rows:
        lat = [f"{r[k]:.0f}" if k in r else "—" for k in ("p50_us", "p99_us", "qps_one_thread")]
        table.add_row(name, f"{r.get('ndcg@10', float('nan')):.4f}", f"{r.get('recall@100', float('nan')):.4f}", *lat)
    return table


def summary_lines(result: dict[str, Any]) -> list[str]:
    s, q = result["encode_scaling"], result["query_encoding"]
    return [
        f"encode: {s['w1_docs_per_s']:.1f} docs/s with 1 replica, {s['w2_docs_per_s']:.1f} with 2 "
        f"(×{s['ratio_2_vs_1']:.2f}); whole corpus {result['encode']['docs_per_s']:.1f} docs/s",
        f"seismic: built in {result['seismic']['build_s']:.2f} s, {result['seismic']['bytes'] / 1e6:.1f} MB",
        f"query encoding p50: model {q['model']['p50_us'] / 1e3:.2f} ms, inference-free "
        f"{q['inference_free_same_base']['p50_us'] / 1e3:.3f} ms through the model, "
        f"{q['inference_free_index_path']['p50_us'] / 1e3:.3f} ms tokenizer + weight table (the index's path)",
        f"results: {result['path']}",
    ]

"""Retrieval, sparsity and token views of a sparse encoder on CornStack-format rows (driver side).

Data contract: an evaluation row has ``anchor`` (the query), ``positive`` (its one relevant
document) and ``negative_1..k``; the corpus is every distinct positive and negative of the rows.
Every system is encoded once per task (:class:`Scored`: every query against every document) and
its ranking scored by sentence-transformers' ``SparseInformationRetrievalEvaluator.compute_metrics``
— the sparse and dense models as much as the BM25 baselines ranked by bm25s — so every number in
a report is computed by one implementation, and the paired comparison reuses the same scores.
Sparsity statistics are the evaluator's (``SparseEncoder.sparsity`` and its FLOPS estimate).
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sparse_ray.data import sources
from sparse_ray.data.cornstack import RowRules, is_holdout, iter_lines, parse_line

K_VALUES = {"mrr_at_k": [10], "ndcg_at_k": [10], "precision_recall_at_k": [10, 100], "map_at_k": [100]}
METRIC_KEYS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")


# ---------------------------------------------------------------- small, exact pieces


def active_dims(embeddings: torch.Tensor) -> dict[str, float]:
    """Non-zero dimensions per vector: mean, median, p90, max."""
    dense = embeddings.to_dense() if embeddings.is_sparse else embeddings
    counts = (dense != 0).sum(dim=1).float()
    if counts.numel() == 0:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0}
    return {
        "mean": counts.mean().item(),
        "median": counts.median().item(),
        "p90": torch.quantile(counts, 0.9).item(),
        "max": counts.max().item(),
    }


def corpus_of(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[int]]:
    """Queries, the distinct-document corpus, and each query's relevant document index."""
    index: dict[str, int] = {}
    for row in rows:
        for key in sorted(k for k in row if k == "positive" or k.startswith("negative_")):
            index.setdefault(row[key], len(index))
    return [r["anchor"] for r in rows], list(index), [index[r["positive"]] for r in rows]


# ---------------------------------------------------------------- evaluation sets


def read_rows(
    path: str | None, language: str, limit: int | None = None, num_negatives: int = 1, holdout: float | None = None
) -> list[dict[str, str]]:
    """Valid rows of a CornStack-format location as evaluation rows (see the module contract).

    ``holdout`` keeps only rows on the hold-out side of that fraction (a training run's hold-out);
    None keeps every row (a set built from code the model never saw). ``path`` None: the hub's
    shards (as a run trained without ``--data`` read them). Reads on the driver: meant for
    evaluation-sized sets, stops after ``limit`` rows.
    """
    source = sources.list_shards(sources.language_root(path, language, several=False), language)
    fs, _ = sources.filesystem(source.root)
    rules = RowRules(language, num_negatives, holdout or 0.0, 2000, 20000)
    rows: list[dict[str, str]] = []
    for file in source.files:
        for rec in _valid_records(fs, file, rules):
            if holdout is not None and not is_holdout(rec["anchor"], language, holdout):
                continue
            row = {"anchor": rec["anchor"], "positive": rec["positive"]}
            row.update({f"negative_{i + 1}": neg for i, neg in enumerate(rec["negatives"])})
            rows.append(row)
            if limit and len(rows) >= limit:
                return rows
    return rows


def _valid_records(fs: Any, file: str, rules: RowRules) -> Iterator[dict[str, Any]]:
    """Valid parsed records of one shard; a cut shard gives its complete rows before the cut."""
    with fs.open(file, "rb") as raw:
        try:
            for line in iter_lines(raw, gzipped=file.endswith(".gz")):
                rec = parse_line(line, rules)
                if not rec["reason"]:
                    yield rec
        except (OSError, EOFError, zlib.error):
            return


@dataclass
class IRTask:
    """Queries, corpus and relevance judgements in the evaluators' id-keyed form."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> IRTask:
        queries, corpus, relevant = corpus_of(rows)
        return cls(
            queries={f"q{i}": q for i, q in enumerate(queries)},
            corpus={f"d{i}": d for i, d in enumerate(corpus)},
            relevant={f"q{i}": {f"d{r}"} for i, r in enumerate(relevant)},
        )


def _normalise(raw: dict[str, Any]) -> dict[str, float]:
    """Evaluator keys (``name_dot_ndcg@10`` or nested ``ndcg@k``) → ``ndcg@10`` etc."""
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # compute_metrics: {"ndcg@k": {10: v}}
            for k, v in value.items():
                out[key.replace("@k", f"@{k}")] = float(v)
        else:
            out[re.sub(r"^.*?_?(dot|cosine)_", "", key)] = float(value)
    return {k: out[k] for k in METRIC_KEYS if k in out}


def sparse_evaluator(task: IRTask, batch_size: int = 32) -> Any:
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

    return SparseInformationRetrievalEvaluator(
        task.queries, task.corpus, task.relevant, batch_size=batch_size, write_csv=False, name="ir", **K_VALUES
    )


@dataclass
class Scored:
    """One system on one task: ``scores[i, j]`` of query i against document j (task order), and
    for a sparse encoder the evaluator's sparsity statistics of its vectors."""

    scores: torch.Tensor
    stats: dict[str, float]


def score_sparse(model: Any, task: IRTask, batch_size: int = 32) -> Scored:
    """Encode the task's queries and corpus once with a SparseEncoder (dot product, as the evaluator)."""
    from sentence_transformers.util import compute_count_vector

    kw = {"batch_size": batch_size, "convert_to_sparse_tensor": True, "save_to_cpu": True}
    q = model.encode_query(list(task.queries.values()), **kw)
    d = model.encode_document(list(task.corpus.values()), **kw)
    flops = torch.dot(compute_count_vector(q) / len(q), compute_count_vector(d) / len(d))
    stats = {
        "query_active_dims": float(model.sparsity(q)["active_dims"]),
        "corpus_active_dims": float(model.sparsity(d)["active_dims"]),
        "avg_flops": float(flops),
    }
    return Scored(q.to_dense() @ d.to_dense().T, stats)


def score_dense(model_path: str, task: IRTask, batch_size: int = 32) -> Scored:
    """A dense SentenceTransformer (cosine), encoded once, for reference."""
    from sentence_transformers import SentenceTransformer

    from sparse_ray.offline import load_kwargs

    model = SentenceTransformer(model_path, device="cpu", **load_kwargs(model_path))
    kw = {"batch_size": batch_size, "convert_to_tensor": True, "normalize_embeddings": True}
    q = model.encode(list(task.queries.values()), **kw)
    return Scored(q @ model.encode(list(task.corpus.values()), **kw).T, {})


def ir_metrics(task: IRTask, scored: Scored) -> dict[str, Any]:
    """The evaluator's retrieval metrics of a system's ranking, with its sparsity statistics."""
    ids = list(task.corpus)
    deepest = max(k for ks in K_VALUES.values() for k in ks)
    top = torch.topk(scored.scores, k=min(deepest, len(ids)), dim=1)
    results = [
        [{"corpus_id": ids[j], "score": s} for j, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]
    return {**_normalise(sparse_evaluator(task).compute_metrics(results)), **scored.stats}


def model_ir(model: Any, task: IRTask, batch_size: int = 32) -> dict[str, Any]:
    """Retrieval metrics and the evaluator's sparsity statistics for a sparse encoder."""
    return ir_metrics(task, score_sparse(model, task, batch_size))


def plain_tokens(text: str) -> list[str]:
    """Lower-cased word tokens, identifiers kept whole (the usual BM25 baseline)."""
    return re.findall(r"\w+", text.lower())


def bm25_ir(task: IRTask, tokenize: Callable[[str], list[str]], top_k: int = 100) -> dict[str, float]:
    """BM25 (bm25s, deterministic) on the same task, scored by the sparse evaluator's metric code."""
    import bm25s

    ids = list(task.corpus)
    retriever = bm25s.BM25()
    retriever.index([tokenize(task.corpus[i]) or ["_"] for i in ids], show_progress=False)
    k = min(top_k, len(ids))
    hits, scores = retriever.retrieve(
        [tokenize(q) or ["_"] for q in task.queries.values()], k=k, show_progress=False, n_threads=1
    )
    results = [
        [{"corpus_id": ids[int(j)], "score": float(s)} for j, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(hits, scores, strict=True)
    ]
    return _normalise(sparse_evaluator(task).compute_metrics(results))


# ---------------------------------------------------------------- sparsity, tokens, speed


def sparsity(model: Any, task: IRTask, batch_size: int = 32) -> dict[str, Any]:
    """Active dimensions of queries and documents, sparsity ratio, expected dot-product FLOPS."""
    q = model.encode_query(list(task.queries.values()), batch_size=batch_size, convert_to_tensor=True)
    d = model.encode_document(list(task.corpus.values()), batch_size=batch_size, convert_to_tensor=True)
    vocab = q.shape[-1]
    qd, dd = q.to_dense() != 0, d.to_dense() != 0
    # expected FLOPS of a query-document dot product: sum over vocab of P(q_j != 0) * P(d_j != 0)
    flops = float((qd.float().mean(0) * dd.float().mean(0)).sum())
    qa, da = active_dims(q), active_dims(d)
    return {
        "vocab_size": vocab,
        "query_active_dims": qa,
        "document_active_dims": da,
        "query_sparsity_ratio": 1 - qa["mean"] / vocab,
        "document_sparsity_ratio": 1 - da["mean"] / vocab,
        "expected_flops": flops,
    }


def top_tokens(model: Any, texts: list[str], query: bool, k: int = 20, batch_size: int = 32) -> list[tuple[str, float]]:
    """Tokens with the largest total weight over ``texts``."""
    encode = model.encode_query if query else model.encode_document
    emb = encode(texts, batch_size=batch_size, convert_to_tensor=True).to_dense().sum(0)
    weights, ids = emb.topk(min(k, emb.numel()))
    tokenizer = model.tokenizer
    return [(tokenizer.convert_ids_to_tokens(int(i)), float(w)) for w, i in zip(weights, ids, strict=True) if w > 0]


def explain(model: Any, text: str, query: bool = True, k: int = 20) -> list[tuple[str, float]]:
    """The top weighted tokens of one text."""
    encode = model.encode_query if query else model.encode_document
    return [(tok, float(w)) for tok, w in model.decode(encode([text], convert_to_tensor=True), top_k=k)[0]]


def throughput(model: Any, task: IRTask, batch_size: int = 32, repeats: int = 3) -> dict[str, Any]:
    """Encode rate (texts/s, median of ``repeats``) for queries and documents."""

    def rate(fn: Callable, texts: list[str]) -> float:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(texts, batch_size=batch_size)
            runs.append(len(texts) / (time.perf_counter() - start))
        return sorted(runs)[len(runs) // 2]

    queries, docs = list(task.queries.values()), list(task.corpus.values())
    return {
        "batch_size": batch_size,
        "device": str(model.device),
        "repeats": repeats,
        "queries_per_second": rate(model.encode_query, queries),
        "documents_per_second": rate(model.encode_document, docs),
    }


def evaluate(model: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Retrieval metrics and active dimensions of ``model`` on hold-out ``rows`` (used by training)."""
    if not rows:
        return {}
    task = IRTask.from_rows(rows)
    return {**model_ir(model, task, batch_size), "queries": len(task.queries), "corpus": len(task.corpus)}


def eval_point(logs: dict[str, Any], step: int) -> dict[str, float]:
    """Hold-out metrics from a trainer log entry (``eval_ir_dot_ndcg@10`` → ``ndcg@10``)."""
    keep = ("ndcg@10", "mrr@10", "recall@10", "query_active_dims", "corpus_active_dims")
    point = {"step": step}
    for key, value in logs.items():
        short = key.removeprefix("eval_ir_").removeprefix("dot_")
        if short in keep:
            point[short] = float(value)
    return point

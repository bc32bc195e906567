"""``sparse-ray data score``: a teacher bi-encoder's scores (and, on request, its hard negatives)
written into one language's CornStack shards, once, so distillation reads them as they stand
(``train.teacher=data``) instead of running a teacher beside the workers.

Data contract of every row written: the input row with

    document_score   float        the teacher's cosine of ``query`` and ``document`` (4 decimals)
    negative_scores  list[float]  the teacher's cosine of ``query`` and each negative, in order
    negatives        list[str]    unchanged, or with ``mine=N`` the N documents of the row's shard
                                  the teacher ranks highest for the query, best first (CornStack's
                                  own mining), leaving out the row's own document and any scoring at
                                  least ``guard`` × the positive's cosine (likely false negatives)

and every other column as it was (``document_rank`` keeps the original scorer's rank). A line that
is not a JSON object with string ``query`` and ``document`` is dropped and counted; so is a row
left with fewer than N negatives when mining.

Layout and resuming as ``data mirror``: ``<to>/<language>/<shard path relative to the source
root>``; a shard already there is skipped. Each shard is read as a stream, its output gzipped in
memory and written in one call (a local ``*.part`` renamed, or one S3 put), so an interrupted run
leaves no half-written shard. Mining holds the shard's texts and document embeddings (the pool is
the shard: CornStack's shards are tens of thousands of rows).
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse_ray.data import cornstack, sources
from sparse_ray.errors import DataError

#: Rows scored per teacher call when not mining.
CHUNK_ROWS = 256
#: Texts per encode batch.
ENCODE_BATCH = 64


@dataclass
class ScoreReport:
    """What one score run did, shard by shard."""

    target: str
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def load_teacher(name: str) -> Any:
    """A SentenceTransformer on this process's CPU; ``ValueError`` with one line if ``name`` is not one."""
    from sentence_transformers import SentenceTransformer

    from sparse_ray.model import quiet_load
    from sparse_ray.offline import load_kwargs

    try:
        with quiet_load():
            model = SentenceTransformer(name, device="cpu", **load_kwargs(name))
    except Exception as exc:  # noqa: BLE001 - a wrong path or an unreachable hub id
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"teacher {name!r} cannot be loaded as a SentenceTransformer: {first}") from None
    if not model.get_embedding_dimension():
        raise ValueError(f"teacher {name!r} has no fixed embedding dimension")
    return model


def embed(model: Any, texts: list[str]) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (rows in order)."""
    kw = {"batch_size": ENCODE_BATCH, "normalize_embeddings": True, "convert_to_numpy": True}
    return np.asarray(model.encode(texts, show_progress_bar=False, **kw), dtype=np.float32)


def check_options(mine: int, guard: float) -> None:
    """``ValueError`` in one line for a negative ``mine`` or a ``guard`` outside (0, 1]."""
    if mine < 0 or not 0 < guard <= 1:
        raise ValueError(f"--mine must be >= 0 and --guard in (0, 1], got {mine} and {guard:g}")


def score(
    language: str,
    to: str,
    model: Any,
    source: str | None = None,
    mine: int = 0,
    guard: float = 0.95,
    progress: Callable[[str, int], None] | None = None,
) -> ScoreReport:
    """Score (and with ``mine`` > 0 re-mine) every shard of ``language`` under ``source`` (a path,
    ``s3://`` or ``hf://``; None: the hub) into ``<to>/<language>``; ``progress(shard, rows)``
    after each shard."""
    check_options(mine, guard)
    src = sources.list_shards(sources.language_root(source, language, several=False), language)
    src_fs, src_root = sources.filesystem(src.root)
    dst_fs, dst_root = sources.filesystem(to)
    target = posixpath.join(dst_root.rstrip("/"), language)
    base = src_root.rstrip("/") if src_fs.isdir(src_root) else posixpath.dirname(src_root)
    report, started = ScoreReport(target=f"{to.rstrip('/')}/{language}"), time.perf_counter()
    for path in src.files:
        rel = posixpath.relpath(path, base)
        dest = posixpath.join(target, rel)
        if dst_fs.exists(dest):
            report.skipped.append(rel)
            continue
        with src_fs.open(path, "rb") as stream:
            rows = _parse(cornstack.iter_lines(stream, gzipped=path.endswith(".gz")), report.dropped)
            chunks = _mined(list(rows), model, mine, guard, report.dropped) if mine else _scored(rows, model)
            data, n = _gzipped(chunks)
        _put(dst_fs, dest, data)
        report.scored.append(rel)
        report.rows += n
        if progress:
            progress(rel, n)
    report.seconds = time.perf_counter() - started
    return report


def _parse(lines: Iterator[bytes], dropped: Counter) -> Iterator[dict[str, Any]]:
    """Rows with string ``query`` and ``document``; anything else counted as ``unparseable``."""
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not all(isinstance(row.get(c), str) for c in ("query", "document")):
            dropped["unparseable"] += 1
            continue
        negatives = row.get("negatives")
        row["negatives"] = [n for n in negatives if isinstance(n, str)] if isinstance(negatives, list) else []
        yield row


def _scored(rows: Iterator[dict[str, Any]], model: Any) -> Iterator[list[dict[str, Any]]]:
    """Chunks of rows with the teacher's scores of their own positive and negatives."""
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK_ROWS:
            yield _with_scores(chunk, model)
            chunk = []
    if chunk:
        yield _with_scores(chunk, model)


def _with_scores(rows: list[dict[str, Any]], model: Any) -> list[dict[str, Any]]:
    texts = list(dict.fromkeys(t for r in rows for t in (r["query"], r["document"], *r["negatives"])))
    vectors = dict(zip(texts, embed(model, texts), strict=True))
    for row in rows:
        q = vectors[row["query"]]
        row["document_score"] = round(float(q @ vectors[row["document"]]), 4)
        row["negative_scores"] = [round(float(q @ vectors[n]), 4) for n in row["negatives"]]
    return rows


def _mined(
    rows: list[dict[str, Any]], model: Any, n: int, guard: float, dropped: Counter
) -> Iterator[list[dict[str, Any]]]:
    """The shard's rows with the teacher's top-``n`` documents of the shard as negatives."""
    if not rows:
        return
    docs = list(dict.fromkeys(r["document"] for r in rows))
    doc_vecs = embed(model, docs)
    own = {d: i for i, d in enumerate(docs)}
    k = min(len(docs), 3 * n + 1)
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        sims = embed(model, [r["query"] for r in chunk]) @ doc_vecs.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        kept = []
        for row, s, ids in zip(chunk, sims, top, strict=True):
            pos = float(s[own[row["document"]]])
            negs = [int(j) for j in ids if docs[j] != row["document"] and s[j] < guard * pos][:n]
            if len(negs) < n:
                dropped["too_few_negatives"] += 1
                continue
            row.update(
                negatives=[docs[j] for j in negs],
                negative_scores=[round(float(s[j]), 4) for j in negs],
                document_score=round(pos, 4),
            )
            kept.append(row)
        yield kept


def _gzipped(chunks: Iterator[list[dict[str, Any]]]) -> tuple[bytes, int]:
    """JSON lines of every row, gzipped (mtime 0: a rerun writes the same bytes); and the row count."""
    buf, n = io.BytesIO(), 0
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for chunk in chunks:
            for row in chunk:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
            n += len(chunk)
    return buf.getvalue(), n


def _put(fs: Any, dest: str, data: bytes) -> None:
    local = "file" in fs.protocol
    part = f"{dest}.part" if local else dest
    try:
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.pipe_file(part, data)
        if local:
            fs.mv(part, dest)
    except Exception as exc:
        raise DataError(f"cannot write {dest}: {' '.join(str(exc).split())[:200] or type(exc).__name__}") from None

"""Build CornStack-format shards from source code: docstring → function pairs with hard negatives
mined by BM25 or, with a teacher bi-encoder, by the teacher's similarity (CornStack's own way).

Data contract of every row written (exactly CornStack's columns)::

    query            str        first paragraph of the docstring
    document         str        the function's source with its docstring removed
    negatives        list[str]  other functions of the corpus, highest score first
    negative_scores  list[float] score of each negative for the query (BM25, or the teacher's cosine)
    document_score   float      score of the positive (likewise)
    document_rank    int        rank of the positive among all documents (0 = first)
    metadata         dict       {"objective": {"self": [], "paired": [], "triplet": [[...]]}}

Sources are parsed with tree-sitter grammars (``sparse_ray.tools.extract``: python, java, javascript,
typescript, go, rust, cpp, php, ruby). The filters follow
CornStack's description: short, non-English or URL/HTML-laden docstrings and tiny functions are
dropped, pairs are deduplicated, negatives scoring too close to the positive are treated as false
negatives and dropped, and a consistency filter keeps a pair only when the scorer ranks its own
function in the top ``consistency_k`` for its docstring. A teacher's cosine scores are teacher
scores for distillation as they stand (``train.teacher=data``, ``train.teacher_scale=20``).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse_ray.data.lexical import code_tokens
from sparse_ray.tools import extract

METADATA = {"objective": {"self": [], "paired": [], "triplet": [["query", "document", "negatives"]]}}
_URL_OR_HTML = re.compile(r"https?://|www\.|</?[a-zA-Z][^>]*>")


@dataclass(frozen=True)
class BuildOptions:
    num_negatives: int = 7
    """Negatives stored per row (CornStack stores tens; the sample keeps a few to stay small)."""
    min_query_words: int = 4
    """Docstrings whose first paragraph has fewer words are dropped."""
    min_code_lines: int = 3
    """Functions with fewer non-empty lines (docstring removed) are dropped."""
    max_code_chars: int = 4000
    """Functions longer than this are dropped (keeps shards small)."""
    consistency_k: int = 20
    """Keep a pair only if its own function ranks in the BM25 top-k for its docstring."""
    false_negative_ratio: float = 0.95
    """Drop negatives whose score is at least this fraction of the positive's score."""
    max_rows: int | None = None
    """Stop after this many rows (after filtering), taking files in sorted order."""
    rows_per_shard: int = 5000
    """Rows per ``shard-NNNNN.jsonl.gz`` file."""
    teacher: str | None = None
    """A SentenceTransformer (path or hub id) that scores and mines instead of BM25; None: BM25."""


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph, whitespace folded."""
    para = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    return " ".join(para.split())


def _is_english(text: str) -> bool:
    letters = sum(ch.isalpha() for ch in text)
    ascii_letters = sum(ch.isascii() and ch.isalpha() for ch in text)
    return letters > 0 and ascii_letters / letters > 0.95


def extract_pairs(language: str, files: Iterable[Path], opts: BuildOptions, drops: Counter) -> list[tuple[str, str]]:
    """Filtered, deduplicated (query, document) pairs from one language's files, in file order."""
    pairs, seen_q, seen_d = [], set(), set()
    for path in files:
        try:
            source = path.read_bytes()
            source.decode("utf-8")
        except (UnicodeDecodeError, OSError):
            drops["unreadable_file"] += 1
            continue
        for doc, code in extract.pairs(language, source):
            query = first_paragraph(doc)
            reason = _reject(query, code, opts)
            if reason is None and (query in seen_q or code in seen_d):
                reason = "duplicate"
            if reason:
                drops[reason] += 1
                continue
            seen_q.add(query)
            seen_d.add(code)
            pairs.append((query, code))
    return pairs


def _reject(query: str, code: str, opts: BuildOptions) -> str | None:
    if len(query.split()) < opts.min_query_words:
        return "short_docstring"
    if query.startswith(("@", ":param", ":return")):
        return "tags_only_docstring"
    if not _is_english(query):
        return "non_english_docstring"
    if _URL_OR_HTML.search(query):
        return "url_or_html_docstring"
    if sum(1 for line in code.splitlines() if line.strip()) < opts.min_code_lines:
        return "tiny_function"
    if len(code) > opts.max_code_chars:
        return "huge_function"
    return None


def _candidates(pairs: list[tuple[str, str]], opts: BuildOptions) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the top documents (ids and scores, best first) by BM25 or the teacher's cosine."""
    docs = [code for _, code in pairs]
    k = min(len(docs), max(opts.consistency_k, opts.num_negatives * 3 + 1))
    if opts.teacher:
        from sparse_ray.tools.score import embed, load_teacher

        model = load_teacher(opts.teacher)
        sims = embed(model, [q for q, _ in pairs]) @ embed(model, docs).T
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(sims, ids, axis=1)
    import bm25s

    retriever = bm25s.BM25()
    retriever.index([code_tokens(d) or ["_"] for d in docs], show_progress=False)
    return retriever.retrieve([code_tokens(q) or ["_"] for q, _ in pairs], k=k, show_progress=False)


def mine(pairs: list[tuple[str, str]], opts: BuildOptions, drops: Counter) -> list[dict]:
    """BM25 (or the teacher) over all documents: hard negatives, false-negative guard, consistency filter."""
    docs = [code for _, code in pairs]
    ids, scores = _candidates(pairs, opts)
    rows = []
    for i, (query, code) in enumerate(pairs):
        rank = np.flatnonzero(ids[i] == i)
        if rank.size == 0 or rank[0] >= opts.consistency_k:
            drops["inconsistent_pair"] += 1
            continue
        pos_score = float(scores[i][rank[0]])
        negs = [
            (int(j), float(s))
            for j, s in zip(ids[i], scores[i], strict=True)
            if j != i and s < opts.false_negative_ratio * pos_score and s > 0
        ][: opts.num_negatives]
        if len(negs) < opts.num_negatives:
            drops["too_few_negatives"] += 1
            continue
        rows.append(
            {
                "query": query,
                "document": code,
                "negatives": [docs[j] for j, _ in negs],
                "negative_scores": [round(s, 4) for _, s in negs],
                "document_score": round(pos_score, 4),
                "document_rank": int(rank[0]),
                "metadata": METADATA,
            }
        )
    return rows


def source_files(language: str, sources: list[Path]) -> list[Path]:
    """The language's source files under ``sources`` (directories searched recursively), sorted."""
    if language not in extract.GRAMMARS:
        raise ValueError(f"no extractor for {language!r}; choose one of {', '.join(extract.GRAMMARS)}")
    suffixes = extract.GRAMMARS[language].suffixes
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise ValueError(f"source path does not exist: {missing[0]}")
    found = (p for src in sources for p in (src.rglob("*") if src.is_dir() else [src]))
    files = sorted({p for p in found if p.is_file() and p.name.endswith(suffixes) and not p.name.endswith(".d.ts")})
    if not files:
        raise ValueError(f"no {language} files ({', '.join(suffixes)}) under {', '.join(map(str, sources))}")
    return files


def write_shards(rows: list[dict], out: Path, rows_per_shard: int) -> list[Path]:
    """Write rows as ``shard-NNNNN.jsonl.gz`` (gzip mtime 0, so rebuilds are byte-identical)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, start in enumerate(range(0, len(rows), rows_per_shard)):
        path = out / f"shard-{n:05d}.jsonl.gz"
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for row in rows[start : start + rows_per_shard]:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        paths.append(path)
    return paths


def build(language: str, sources: list[Path], out: Path, opts: BuildOptions) -> dict:
    """Extract, mine and write one language; returns counts for the caller to print."""
    files = source_files(language, sources)
    drops: Counter = Counter()
    pairs = extract_pairs(language, files, opts, drops)
    rows = mine(pairs, opts, drops)
    if opts.max_rows is not None:
        rows = rows[: opts.max_rows]
    if not rows:
        raise ValueError("no pair survived the filters; nothing written")
    shards = write_shards(rows, out, opts.rows_per_shard)
    return {"files": len(files), "pairs": len(pairs), "rows": len(rows), "shards": len(shards), "dropped": dict(drops)}

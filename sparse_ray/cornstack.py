"""CornStack rows: parse one JSON line, validate it, pick its hard negatives, assign its split.

Input contract (one JSON object per line, gzipped or not)::

    query: str, document: str, negatives: list[str],
    negative_scores: list[float | str] (optional; parallel to negatives),
    document_score, document_rank, metadata: ignored by training.

Output contract (one record per input line, valid or not, so drops can be counted exactly)::

    language: str, split: "train" | "holdout" | "", reason: "" (valid) or the drop reason,
    anchor: str, positive: str, negatives: list[str] (exactly k, best score first), cut: int

``CornStackDatasource`` streams files through this parser inside Ray Data read tasks; it never
holds more than one block of rows.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

BLOCK_ROWS = 512
SCHEMA = pa.schema(
    [
        ("language", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),
        ("anchor", pa.string()),
        ("positive", pa.string()),
        ("negatives", pa.list_(pa.string())),
        ("cut", pa.int32()),
    ]
)


@dataclass(frozen=True)
class RowRules:
    """How raw CornStack rows become training rows (all taken from the run config)."""

    language: str
    num_negatives: int
    holdout_fraction: float
    max_query_chars: int
    max_document_chars: int


def is_holdout(query: str, language: str, fraction: float) -> bool:
    """Stable hash split: the same query lands on the same side in every run and on every host."""
    digest = hashlib.blake2b(f"{language}\0{query}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _score(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_line(line: bytes, rules: RowRules) -> dict[str, Any]:
    """One output record (see the module contract) for one raw line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return _dropped(rules, "undecodable_line")
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return _dropped(rules, "bad_json")
    if not isinstance(row, dict):
        return _dropped(rules, "not_an_object")
    query, document, negatives = row.get("query"), row.get("document"), row.get("negatives")
    if query is None or document is None or negatives is None:
        return _dropped(rules, "missing_field")
    if not isinstance(query, str) or not isinstance(document, str) or not isinstance(negatives, list):
        return _dropped(rules, "wrong_type")
    if not query.strip() or not document.strip():
        return _dropped(rules, "empty_text")
    chosen = _top_negatives(negatives, row.get("negative_scores"), document, rules.num_negatives)
    if chosen is None:
        return _dropped(rules, "too_few_negatives")
    cut = 0
    if len(query) > rules.max_query_chars:
        query, cut = query[: rules.max_query_chars], cut + 1
    texts = []
    for text in [document, *chosen]:
        if len(text) > rules.max_document_chars:
            text, cut = text[: rules.max_document_chars], cut + 1
        texts.append(text)
    split = "holdout" if is_holdout(query, rules.language, rules.holdout_fraction) else "train"
    return {
        "language": rules.language,
        "split": split,
        "reason": "",
        "anchor": query,
        "positive": texts[0],
        "negatives": texts[1:],
        "cut": cut,
    }


def _top_negatives(negatives: list, scores: Any, document: str, k: int) -> list[str] | None:
    """The k best-scoring usable negatives (non-empty strings, not the positive itself)."""
    if isinstance(scores, list) and len(scores) == len(negatives):
        parsed = [_score(s) for s in scores]
        order = sorted(range(len(negatives)), key=lambda i: -(parsed[i] if parsed[i] is not None else float("-inf")))
    else:
        order = list(range(len(negatives)))
    chosen = []
    for i in order:
        neg = negatives[i]
        if isinstance(neg, str) and neg.strip() and neg != document and neg not in chosen:
            chosen.append(neg)
            if len(chosen) == k:
                return chosen
    return chosen if len(chosen) == k else None


def _dropped(rules: RowRules, reason: str) -> dict[str, Any]:
    return {
        "language": rules.language,
        "split": "",
        "reason": reason,
        "anchor": "",
        "positive": "",
        "negatives": [],
        "cut": 0,
    }


def iter_lines(stream: Any, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a (possibly decompressing) byte stream, read in bounded chunks."""
    pending = b""
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


class CornStackDatasource(FileBasedDatasource):
    """Ray Data source for CornStack shards (``.jsonl``/``.jsonl.gz``): one record per line.

    A shard that ends early (truncated gzip, I/O error) yields the rows read so far plus one
    record with reason ``truncated_shard``; the read goes on with the next shard.
    """

    _FILE_EXTENSIONS = ["jsonl.gz", "jsonl", "json.gz", "json"]

    def __init__(self, paths: list[str], rules: RowRules, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self._rules = rules

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        records: list[dict[str, Any]] = []
        try:
            for line in iter_lines(f):
                if line.strip():
                    records.append(parse_line(line, self._rules))
                if len(records) >= BLOCK_ROWS:
                    yield pa.Table.from_pylist(records, schema=SCHEMA)
                    records = []
        except (OSError, EOFError, zlib.error):
            records.append(_dropped(self._rules, "truncated_shard"))
        if records:
            yield pa.Table.from_pylist(records, schema=SCHEMA)

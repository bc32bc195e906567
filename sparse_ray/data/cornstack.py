"""CornStack rows: parse one JSON line, validate it, pick its hard negatives, assign its split.

Input contract (one JSON object per line, gzipped or not)::

    query: str, document: str, negatives: list[str],
    negative_scores: list[float | str] (optional; parallel to negatives),
    document_score, document_rank, metadata: ignored by training.

Output contract (one record per input line, valid or not, so drops can be counted exactly)::

    language: str, split: "train" | "holdout" | "", reason: "" (valid) or the drop reason,
    anchor: str, positive: str, negatives: list[str] (exactly k), cut: int (texts shortened),
    guarded: int (negatives dropped as likely false negatives),
    scores: list[float] | None (the source's ``document_score`` then the chosen negatives' scores,
    in order; None unless every one of them is a number)

With ``need_scores`` (a teacher from the data), a row without those scores is dropped as
``no_teacher_scores``.

Negatives are the k best by score (``top``) or k drawn without replacement with probability
``softmax(score / temperature)`` (``softmax``; seeded by the query, so every run draws the same).
Before either, the false-negative guard drops negatives scoring at least ``false_negative_ratio``
times the positive's ``document_score``. Scores may be numbers or numeric strings; a negative
without a usable score ranks last and is never drawn by ``softmax`` while scored ones remain.

``CornStackDatasource`` streams files through this parser inside Ray Data read tasks; it never
holds more than one block of rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
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
        ("guarded", pa.int32()),
        ("scores", pa.list_(pa.float32())),
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
    negative_sampling: str = "top"
    negative_temperature: float = 0.05
    false_negative_ratio: float = 0.0
    seed: int = 0
    need_scores: bool = False


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
    usable, guarded = _usable_negatives(negatives, row.get("negative_scores"), document, row, rules)
    chosen = _choose(usable, query, rules)
    if chosen is None:
        return _dropped(rules, "too_few_negatives")
    scores = [_score(row.get("document_score")), *(score for _, score in chosen)]
    scores = None if any(s is None or not math.isfinite(s) for s in scores) else scores
    if rules.need_scores and scores is None:
        return _dropped(rules, "no_teacher_scores")
    cut = 0
    if len(query) > rules.max_query_chars:
        query, cut = query[: rules.max_query_chars], cut + 1
    texts = []
    for text in [document, *(neg for neg, _ in chosen)]:
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
        "guarded": guarded,
        "scores": scores,
    }


def _usable_negatives(
    negatives: list, scores: Any, document: str, row: dict, rules: RowRules
) -> tuple[list[tuple[str, float | None]], int]:
    """(text, score) of the non-empty, distinct negatives that are not the positive and pass the
    false-negative guard, in input order; and how many the guard dropped."""
    parsed = [_score(s) for s in scores] if isinstance(scores, list) and len(scores) == len(negatives) else None
    positive = _score(row.get("document_score"))
    limit = rules.false_negative_ratio * positive if rules.false_negative_ratio and positive else None
    usable, seen, guarded = [], {document}, 0
    for i, neg in enumerate(negatives):
        if not isinstance(neg, str) or not neg.strip() or neg in seen:
            continue
        score = parsed[i] if parsed else None
        if limit is not None and score is not None and score >= limit:
            guarded += 1
            continue
        seen.add(neg)
        usable.append((neg, score))
    return usable, guarded


def _choose(
    usable: list[tuple[str, float | None]], query: str, rules: RowRules
) -> list[tuple[str, float | None]] | None:
    """k (negative, score) by the configured strategy (see the module contract); None when fewer than k."""
    k = rules.num_negatives
    if len(usable) < k:
        return None
    if rules.negative_sampling == "softmax":
        rng = random.Random(f"{rules.seed}\0{query}")
        # Gumbel top-k: the k largest score/T + Gumbel noise are a draw without replacement from softmax
        gumbel = [-math.log(-math.log(rng.random() or 1e-300)) for _ in usable]
        temp = rules.negative_temperature
        keys = [s / temp + g if s is not None else -math.inf for (_, s), g in zip(usable, gumbel, strict=True)]
    else:
        keys = [s if s is not None else -math.inf for _, s in usable]
    order = sorted(range(len(usable)), key=lambda i: -keys[i])  # stable: ties keep input order
    return [usable[i] for i in order[:k]]


def _dropped(rules: RowRules, reason: str) -> dict[str, Any]:
    return {
        "language": rules.language,
        "split": "",
        "reason": reason,
        "anchor": "",
        "positive": "",
        "negatives": [],
        "cut": 0,
        "guarded": 0,
        "scores": None,
    }


def iter_lines(stream: Any, gzipped: bool = False, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a raw byte stream, read in bounded chunks; ``gzipped`` inflates it on the way.

    Inflating here (not in a decompressing file object) is what keeps a cut shard's rows: every
    complete line of the readable prefix is yielded before ``EOFError`` reports the cut, and the
    half line at the cut never is. Concatenated gzip members are read as one stream.
    """
    chunks = _inflate(stream, chunk_bytes) if gzipped else iter(lambda: stream.read(chunk_bytes), b"")
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _inflate(stream: Any, chunk_bytes: int) -> Iterator[bytes]:
    """Decompressed bytes of a gzip stream as they become readable; ``EOFError`` if it is cut."""
    inflater, fed = zlib.decompressobj(wbits=31), False
    while raw := stream.read(chunk_bytes):
        while raw:
            fed = True
            yield inflater.decompress(raw)
            raw = b""
            if inflater.eof:  # one member ended: the rest is the next member
                raw, inflater, fed = inflater.unused_data, zlib.decompressobj(wbits=31), False
    if fed and not inflater.eof:
        raise EOFError("compressed shard ends before its end-of-stream marker")


class CornStackDatasource(FileBasedDatasource):
    """Ray Data source for CornStack shards (``.jsonl``/``.jsonl.gz``): one record per line.

    A shard that ends early (truncated gzip, I/O error) yields the rows read so far plus one
    record with reason ``truncated_shard``; the read goes on with the next shard.
    """

    _FILE_EXTENSIONS = ["jsonl.gz", "jsonl", "json.gz", "json"]

    def resolve_compression(self, path: str, open_args: dict[str, Any]) -> str | None:
        """Raw bytes: ``read_records`` inflates them itself, so a cut keeps its complete rows."""
        return None

    def __init__(self, paths: list[str], rules: RowRules, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self._rules = rules

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        yield from read_records(f, self._rules, gzipped=path.endswith(".gz"))


def read_records(stream: Any, rules: RowRules, gzipped: bool = False) -> Iterator[pa.Table]:
    """Blocks of at most ``BLOCK_ROWS`` output records (see the module contract) from one shard's
    raw byte stream; a shard that ends early keeps its complete rows and adds one
    ``truncated_shard`` record."""
    records: list[dict[str, Any]] = []
    try:
        for line in iter_lines(stream, gzipped):
            if line.strip():
                records.append(parse_line(line, rules))
            if len(records) >= BLOCK_ROWS:
                yield pa.Table.from_pylist(records, schema=SCHEMA)
                records = []
    except (OSError, EOFError, zlib.error):
        records.append(_dropped(rules, "truncated_shard"))
    if records:
        yield pa.Table.from_pylist(records, schema=SCHEMA)

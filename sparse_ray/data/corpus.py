"""A corpus to index: the ``document`` of every line of CornStack-format shards.

Output contract (one record per input line, so skips are counted exactly)::

    doc_id: "<shard file name>:<line number>" (unique, stable across runs: what resume keys on),
    text: the function, language, path: the shard it came from,
    skip: "" or why the line is no document (bad_json, not_an_object, empty_document, truncated_shard)

A shard cut short keeps every complete line before the cut (see ``cornstack.iter_lines``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from sparse_ray.data.cornstack import BLOCK_ROWS, iter_lines

SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("path", pa.string()),
        ("skip", pa.string()),
    ]
)


def corpus_record(line: bytes, name: str, number: int, language: str) -> dict[str, str]:
    """One input line as an output record (see the module contract)."""
    rec = {"doc_id": f"{name}:{number}", "text": "", "language": language, "path": name, "skip": ""}
    try:
        obj = json.loads(line)
    except ValueError:
        return {**rec, "skip": "bad_json"}
    if not isinstance(obj, dict):
        return {**rec, "skip": "not_an_object"}
    text = obj.get("document")
    if not isinstance(text, str) or not text.strip():
        return {**rec, "skip": "empty_document"}
    return {**rec, "text": text}


class CorpusDatasource(FileBasedDatasource):
    """Ray Data source of corpus records from CornStack-format shards (``.jsonl``/``.jsonl.gz``)."""

    _FILE_EXTENSIONS = ["jsonl.gz", "jsonl", "json.gz", "json"]

    def __init__(self, paths: list[str], language: str, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self._language = language

    def resolve_compression(self, path: str, open_args: dict[str, Any]) -> str | None:
        return None  # raw bytes: iter_lines inflates them, so a cut keeps its complete lines

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        name, records, number = PurePosixPath(path).name, [], 0
        try:
            for line in iter_lines(f, gzipped=path.endswith(".gz")):
                number += 1
                if line.strip():
                    records.append(corpus_record(line, name, number, self._language))
                if len(records) >= BLOCK_ROWS:
                    yield pa.Table.from_pylist(records, schema=SCHEMA)
                    records = []
        except (OSError, EOFError, zlib.error):
            records.append({"doc_id": f"{name}:cut", "text": "", "language": self._language, "path": name})
            records[-1]["skip"] = "truncated_shard"
        if records:
            yield pa.Table.from_pylist(records, schema=SCHEMA)

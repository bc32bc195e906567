"""Builder: exact pairs from a fixture source tree; its shards pass the reader's validation."""

from __future__ import annotations

import gzip
import json
import textwrap

import pytest

from sparse_ray.build import BuildOptions, build, code_tokens, first_paragraph, python_pairs
from sparse_ray.cornstack import RowRules, parse_line

CORNSTACK_COLUMNS = ("query", "document", "negatives", "negative_scores", "document_score", "document_rank", "metadata")

SOURCE = textwrap.dedent(
    '''
    import json


    def load_settings(path):
        """Read the settings file and return its values as a dictionary.

        Extra details that are not part of the query.
        """
        with open(path) as fh:
            return json.load(fh)


    class Store:
        @staticmethod
        def save_record(record, target):
            """Write one record to the target stream as a JSON line."""
            target.write(json.dumps(record))
            target.write("\\n")
            return len(record)


    def undocumented(x):
        return x
    '''
)


def test_python_pairs_are_exactly_the_documented_functions():
    pairs = list(python_pairs(SOURCE))
    assert [first_paragraph(doc) for doc, _ in pairs] == [
        "Read the settings file and return its values as a dictionary.",
        "Write one record to the target stream as a JSON line.",
    ]
    assert pairs[0][1] == "def load_settings(path):\n    with open(path) as fh:\n        return json.load(fh)"
    assert pairs[1][1].startswith("@staticmethod\ndef save_record(record, target):\n    target.write")
    assert all('"""' not in code for _, code in pairs)


def test_code_tokens_split_identifiers():
    assert code_tokens("def parseHTTPResponse(raw_bytes):") == ["parse", "http", "response", "raw", "bytes"]


def test_build_writes_cornstack_shards_the_reader_accepts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        body = SOURCE.replace("load_settings", f"load_settings_{i}").replace("settings file", f"settings file {i}")
        body = body.replace("save_record", f"save_record_{i}").replace("one record", f"record number {i}")
        (src / f"mod{i}.py").write_text(body)
    report = build("python", [src], tmp_path / "out", BuildOptions(num_negatives=3, consistency_k=30))
    assert report["rows"] > 0 and report["shards"] == 1
    rows = [json.loads(line) for line in gzip.open(tmp_path / "out" / "shard-00000.jsonl.gz", "rt")]
    assert len(rows) == report["rows"]
    assert list(rows[0]) == list(CORNSTACK_COLUMNS)
    rules = RowRules("python", 3, 0.0, 2000, 20000)
    assert all(parse_line(json.dumps(r).encode(), rules)["reason"] == "" for r in rows)
    assert all(r["document"] not in r["negatives"] for r in rows)


def test_build_refuses_other_languages_for_now(tmp_path):
    with pytest.raises(ValueError, match="python only"):
        build("rust", [tmp_path], tmp_path / "out", BuildOptions())

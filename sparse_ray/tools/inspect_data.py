"""``sparse-ray data inspect PATH``: schema, row counts, negatives per row, drops, example rows.

Reads on the driver, streaming line by line (bounded memory), up to ``limit`` rows per language.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

from sparse_ray.data import sources
from sparse_ray.data.cornstack import RowRules, iter_lines, parse_line


def inspect(path: str, language: str, limit: int | None = None, examples: int = 3) -> dict[str, Any]:
    """Counts and examples for one language's shards at ``path``."""
    source = sources.list_shards(sources.language_root(path, language, several=False), language)
    fs, _ = sources.filesystem(source.root)
    rules = RowRules(language, num_negatives=1, holdout_fraction=0.0, max_query_chars=10**9, max_document_chars=10**9)
    schema: Counter = Counter()
    dropped: Counter = Counter()
    negatives: list[int] = []
    rows, shown = 0, []
    for file in source.files:
        with fs.open(file, "rb") as raw:
            try:
                for line in iter_lines(raw, gzipped=file.endswith(".gz")):
                    if not line.strip():
                        continue
                    rows += 1
                    rec = parse_line(line, rules)
                    if rec["reason"]:
                        dropped[rec["reason"]] += 1
                    else:
                        obj = json.loads(line)
                        schema.update(f"{k}: {type(v).__name__}" for k, v in obj.items())
                        negatives.append(len(obj["negatives"]))
                        if len(shown) < examples:
                            shown.append({"query": obj["query"], "document": obj["document"][:300]})
                    if limit and rows >= limit:
                        break
            except (OSError, EOFError):
                dropped["truncated_shard"] += 1
        if limit and rows >= limit:
            break
    spread = sorted(negatives)
    return {
        "path": source.root,
        "language": language,
        "shards": len(source.files),
        "rows": rows,
        "valid": len(negatives),
        "dropped": dict(dropped),
        "schema": dict(schema),
        "negatives_per_row": {
            "min": spread[0] if spread else 0,
            "median": statistics.median(spread) if spread else 0,
            "max": spread[-1] if spread else 0,
        },
        "examples": shown,
    }

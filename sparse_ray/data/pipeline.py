"""The Ray Data pipeline of a run: parsed CornStack records per language, one count pass, flat rows.

Training rows reach workers with the columns, in this order (the trainer matches them by order)::

    anchor, positive, negative_1, ..., negative_k, [label,] language

``label`` (a distillation teacher only) holds the teacher's view of the row as a list of floats:
the shards' own scores (positive, then the negatives; ``scores_as_label``), or the teacher model's
embeddings of every text of the row, added after this by ``data.teacher``.

Nothing here materialises the dataset in the driver: the count pass streams per-block counters,
and the training dataset is a lazy plan that Ray Train splits across workers (``equal=True``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sparse_ray.config import Config
from sparse_ray.data.cornstack import CornStackDatasource, RowRules
from sparse_ray.data.sources import Source


@dataclass
class DataStats:
    """Row counts from the count pass, per language."""

    read: Counter = field(default_factory=Counter)
    train: Counter = field(default_factory=Counter)
    holdout: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    guarded: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def to_dict(self) -> dict[str, Any]:
        return {
            lang: {
                "rows_read": self.read[lang],
                "train_rows": self.train[lang],
                "holdout_rows": self.holdout[lang],
                "texts_cut": self.cut[lang],
                "negatives_guarded": self.guarded[lang],
                "dropped": dict(self.dropped[lang]),
            }
            for lang in sorted(self.read)
        }


def columns(num_negatives: int) -> list[str]:
    """Training columns in the order the loss reads them."""
    return ["anchor", "positive", *[f"negative_{i + 1}" for i in range(num_negatives)]]


def row_rules(cfg: Config, language: str) -> RowRules:
    """How the config turns one language's raw CornStack rows into training rows."""
    d = cfg.data
    return RowRules(
        language=language,
        num_negatives=d.num_negatives,
        holdout_fraction=d.holdout_fraction,
        max_query_chars=d.max_query_chars,
        max_document_chars=d.max_document_chars,
        negative_sampling=d.negative_sampling,
        negative_temperature=d.negative_temperature,
        false_negative_ratio=d.false_negative_ratio,
        seed=cfg.train.seed,
        need_scores=scores_as_label(cfg),
    )


def scores_as_label(cfg: Config) -> bool:
    """Whether the run distils from the shards' own scores (``train.teacher=data``)."""
    return bool(cfg.train.distill_loss) and cfg.train.teacher == "data"


def read_languages(cfg: Config, sources: list[Source], concurrency: int | None = None) -> dict[str, Any]:
    """One lazy dataset of parsed records (valid and dropped) per language; ``concurrency`` caps
    the parallel read tasks (benchmarks)."""
    import ray.data

    return {
        src.language: ray.data.read_datasource(
            CornStackDatasource(src.files, row_rules(cfg, src.language), filesystem=src.filesystem),
            concurrency=concurrency,
        )
        for src in sources
    }


def union(per_language: dict[str, Any]) -> Any:
    """One lazy dataset of every language's records."""
    parts = list(per_language.values())
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def read(cfg: Config, sources: list[Source]) -> Any:
    """Lazy dataset of parsed records (valid and dropped) from every source."""
    return union(read_languages(cfg, sources))


def _count_block(batch: pa.Table) -> pa.Table:
    return batch.group_by(["language", "split", "reason"]).aggregate(
        [("cut", "sum"), ("cut", "count"), ("guarded", "sum")]
    )


def count(ds: Any) -> DataStats:
    """One streaming pass: rows read, kept for training, held out and dropped by reason."""
    stats = DataStats()
    for row in ds.map_batches(_count_block, batch_format="pyarrow", batch_size=4096).iter_rows():
        lang, split, reason, n = row["language"], row["split"], row["reason"], int(row["cut_count"])
        stats.read[lang] += n
        stats.cut[lang] += int(row["cut_sum"] or 0)
        stats.guarded[lang] += int(row["guarded_sum"] or 0)
        if reason:
            stats.dropped[lang][reason] += n
        elif split == "train":
            stats.train[lang] += n
        else:
            stats.holdout[lang] += n
    return stats


def _select(batch: pa.Table, split: str, num_negatives: int, label: bool) -> pa.Table:
    keep = batch.filter(pc.and_(pc.equal(batch["reason"], ""), pc.equal(batch["split"], split)))
    out = {"anchor": keep["anchor"], "positive": keep["positive"]}
    for i in range(num_negatives):
        out[f"negative_{i + 1}"] = pc.list_element(keep["negatives"], i)
    if label:
        out["label"] = keep["scores"]
    out["language"] = keep["language"]
    return pa.table(out)


def split_rows(ds: Any, split: str, num_negatives: int, label: bool = False) -> Any:
    """Valid rows of ``split`` ("train" or "holdout") as flat columns (see the module contract);
    ``label`` adds the shards' scores as the ``label`` column."""
    kwargs = {"split": split, "num_negatives": num_negatives, "label": label}
    return ds.map_batches(_select, fn_kwargs=kwargs, batch_format="pyarrow")

"""The distillation teacher on the driver: check it, put it into the training pipeline, record it.

``train.teacher=data`` needs nothing here (the rows carry their scores; ``data/pipeline.py``). A
teacher model is loaded once on the driver before any training starts (a wrong path or an
offline hub id is one line, exit 2), timed on a few rows, and then runs as an actor pool inside
each language's Ray Data pipeline (``data/teacher.py``). ``run.json`` gets the teacher's rows/s
next to the workers' samples/s: the pipeline keeps up while that headroom is well above 1. A
hybrid teacher (``train.teacher_lexical_weight``) also gets each language's BM25 statistics, from
the documents of its first ``LEXICAL_ROWS`` training rows (read here, once). The teacher runs in
the run's precision: bf16 autocast where ``cluster.bf16`` is ``true`` (or ``auto`` and it has GPUs).
"""

from __future__ import annotations

import math
from typing import Any

from sparse_ray.config import Config, loadable_model
from sparse_ray.console import console
from sparse_ray.data import lexical, pipeline, teacher
from sparse_ray.driver.fit import declared_gpus_only
from sparse_ray.errors import ConfigError

#: Rows the driver times the teacher on.
PROBE_ROWS = 32
#: Training rows per language whose documents give a hybrid teacher's BM25 statistics.
LEXICAL_ROWS = 5000


def load(cfg: Config) -> teacher.TeacherEmbedder | None:
    """The run's teacher model loaded on the driver (before Ray starts: a wrong path or an offline
    hub id is one line, exit 2); None without one."""
    if not cfg.train.teacher_model:
        return None
    cols = tuple(pipeline.columns(cfg.data.num_negatives))
    try:
        return teacher.load(
            loadable_model(cfg.train.teacher_model),
            cols,
            cfg.train.teacher_max_seq_length,
            cfg.train.teacher_split_identifiers,
            bf16(cfg, gpu=False),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def pool_sizes(replicas: int, rows: dict[str, int]) -> dict[str, int]:
    """Teacher actors per language: ``replicas`` for the language with the most training ``rows``,
    the same share of them, rounded up, for each other language (at least 1). Every pool then
    scores its rows in about the same time, instead of the largest language's pool scoring alone
    at the end while the others sit idle."""
    most = max(rows.values(), default=0)
    return {lang: max(1, math.ceil(replicas * n / most)) if most else 1 for lang, n in rows.items()}


def attach(
    cfg: Config,
    model: teacher.TeacherEmbedder | None,
    train_ds: dict[str, Any],
    sample: list[dict[str, Any]],
    rows: dict[str, int],
) -> dict[str, Any]:
    """Add the teacher's ``label`` to every language's training rows (a teacher ``model`` only;
    ``rows``: the training rows each language trains, which size its pool); returns what
    ``run.json`` records of the teacher (empty without distillation)."""
    t = cfg.train
    if not t.distill_loss:
        return {}
    if model is None:
        return {"source": "data", "loss": t.loss}
    if not sample:
        sample = next(iter(train_ds.values())).take(PROBE_ROWS)
    rate = teacher.rows_per_second(model, sample[:PROBE_ROWS])
    dim = int(model.model.get_embedding_dimension())
    gpu = cfg.use_gpu and not declared_gpus_only(cfg)
    stats = {lang: bm25_stats(ds, model.columns) for lang, ds in train_ds.items()} if t.teacher_lexical_weight else {}
    pools = pool_sizes(t.teacher_replicas, {lang: rows.get(lang, 0) for lang in train_ds})
    half = bf16(cfg, gpu)
    for lang, ds in train_ds.items():
        train_ds[lang] = teacher.with_teacher(
            ds,
            model.path,
            model.columns,
            pools[lang],
            t.teacher_cpus,
            gpu,
            stats.get(lang),
            t.teacher_max_seq_length,
            model.split_identifiers,
            half,
        )
    hybrid = f" + {t.teacher_lexical_weight:g} x BM25 (code tokens)" if stats else ""
    console.print(
        f"teacher {t.teacher}{hybrid}: {dim}-dim embeddings of {len(model.columns)} texts per row, {rate:.1f} rows/s "
        f"per replica (timed on the driver's CPU{', bf16' if model.bf16 else ''}); replicas in the data pipeline: "
        + ", ".join(f"{lang} {n}" for lang, n in pools.items())
    )
    record = {
        "source": model.path,
        "loss": t.loss,
        "dim": dim,
        "replicas": pools,
        "rows_per_second": rate,
        "split_identifiers": model.split_identifiers,
        "bf16": half,
    }
    if stats:
        record["bm25"] = {
            "weight": t.teacher_lexical_weight,
            "documents": {lang: s.documents for lang, s in stats.items()},
        }
    return record


def bf16(cfg: Config, gpu: bool) -> bool:
    """Whether the teacher encodes in bf16: as the run's ``cluster.bf16`` (``auto``: on GPUs only;
    a GPU without bf16 falls back to float32 in the actor)."""
    return cfg.cluster.bf16_on(gpu)


def bm25_stats(ds: Any, columns: tuple[str, ...]) -> lexical.LexicalStats:
    """BM25 statistics of the documents (every column but the anchor) of ``ds``'s first rows."""
    rows = ds.take(LEXICAL_ROWS)
    return lexical.LexicalStats.fit(row[col] for row in rows for col in columns[1:])


def headroom(record: dict[str, Any], samples_per_second: float) -> dict[str, Any]:
    """The teacher record with its throughput over the workers' (rows/s of all replicas ÷ samples/s)."""
    if "rows_per_second" not in record or samples_per_second <= 0:
        return record
    replicas = sum(record["replicas"].values())
    return {**record, "headroom": record["rows_per_second"] * replicas / samples_per_second}

"""Driver side of the data path: find CornStack shards, build the Ray Data pipeline, count it.

Training rows reach workers with the columns, in this order (the trainer matches them by order)::

    anchor, positive, negative_1, ..., negative_k

Nothing here materialises the dataset in the driver: the count pass streams per-block counters,
and the training dataset is a lazy plan that Ray Train splits across workers (``equal=True``).
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from sparse_ray.config import Config
from sparse_ray.cornstack import CornStackDatasource, RowRules
from sparse_ray.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SHARD_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
HUB_REPO = "hf://datasets/nomic-ai/cornstack-{language}-v1"


@dataclass
class Source:
    """The shards of one language."""

    language: str
    root: str
    files: list[str]
    filesystem: Any = None  # pyarrow filesystem for remote roots, None for local paths


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


# ---------------------------------------------------------------- finding shards


def language_root(path: str | None, language: str, several: bool) -> str:
    """Where one language's shards live for a ``--data`` value."""
    if path is None:
        return HUB_REPO.format(language=language)
    if path == "sample":
        root = SAMPLE_DIR / language
        if not root.is_dir():
            have = ", ".join(sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_dir() and p.name != "unseen"))
            raise DataError(f"no bundled sample for {language} (samples: {have}); pass --data PATH")
        return str(root)
    nested = f"{path.rstrip('/')}/{language}"
    if several:
        return nested
    if "://" not in path:
        return nested if Path(nested).is_dir() else path
    try:  # a remote prefix holding one folder per language (the layout `data mirror` writes)
        fs, base = filesystem(nested)
        return nested if fs.isdir(base) else path
    except Exception:
        return path  # list_shards reports the real problem with one line


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url``: an S3 endpoint from ``AWS_ENDPOINT_URL`` (MinIO, a test server),
    passed explicitly so it travels with the filesystem to Ray Data read tasks. Credentials are
    never passed here: each process takes them from its own AWS environment or profile."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if url.startswith("s3://") and endpoint else {}


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path, ``s3://`` or ``hf://`` URL."""
    return fsspec.core.url_to_fs(url, **storage_options(url))


def list_shards(root: str, language: str) -> Source:
    """All shard files under ``root`` (local, s3://, hf://), sorted; a clear error when none."""
    try:
        fs, base = filesystem(root)
        if fs.isfile(base):
            found = [base]
        elif fs.isdir(base):
            found = fs.find(base)
        else:
            found = []
    except Exception as exc:  # network, credentials, missing bucket: one line for the user
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        if root.startswith("hf://"):
            raise DataError(
                f"cannot read {root} from the Hugging Face hub ({detail}); "
                "offline or behind a firewall, pass --data PATH|s3://BUCKET/PREFIX|sample"
            ) from None
        raise DataError(f"cannot list {root}: {detail}") from None
    files = sorted(f for f in found if f.endswith(SHARD_SUFFIXES))
    if not files:
        raise DataError(f"no CornStack shards (*.jsonl.gz, *.jsonl) for {language} under {root}")
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        return Source(language, root, files)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return Source(language, root, files, PyFileSystem(FSSpecHandler(fs)))


def resolve_sources(cfg: Config) -> list[Source]:
    """One Source per configured language; fails fast (before Ray starts) when any is missing."""
    langs = cfg.data.languages
    return [list_shards(language_root(cfg.data.path, lang, len(langs) > 1), lang) for lang in langs]


# ---------------------------------------------------------------- the Ray Data pipeline


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
    )


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


def _select(batch: pa.Table, split: str, num_negatives: int) -> pa.Table:
    keep = batch.filter(pc.and_(pc.equal(batch["reason"], ""), pc.equal(batch["split"], split)))
    out = {"anchor": keep["anchor"], "positive": keep["positive"]}
    for i in range(num_negatives):
        out[f"negative_{i + 1}"] = pc.list_element(keep["negatives"], i)
    out["language"] = keep["language"]
    return pa.table(out)


def split_rows(ds: Any, split: str, num_negatives: int) -> Any:
    """Valid rows of ``split`` ("train" or "holdout") as flat columns (see the module contract)."""
    return ds.map_batches(_select, fn_kwargs={"split": split, "num_negatives": num_negatives}, batch_format="pyarrow")


@dataclass(frozen=True)
class Plan:
    """How many rows each worker trains on, for how many optimizer steps, in which language.

    ``schedule`` names the language of every step of one epoch; every rank follows the same
    schedule, so each global batch (and the in-batch negatives gathered across ranks) holds one
    language only. Later epochs repeat the schedule over freshly shuffled rows.
    """

    rows_per_worker: int
    steps_per_epoch: int
    max_steps: int
    languages: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per language: ``rows_per_worker`` and ``steps`` (per epoch) this plan uses."""
    schedule: list[str] = field(default_factory=list)


def language_weights(available: dict[str, int], strategy: str, temperature: float) -> dict[str, float]:
    """Sampling probability of each language from its available batches (see ``DataConfig``)."""
    if strategy == "round_robin":
        return {lang: 1 / len(available) for lang in available}
    power = 1.0 if strategy == "proportional" else 1.0 / temperature
    raw = {lang: n**power for lang, n in available.items()}
    total = sum(raw.values())
    return {lang: w / total for lang, w in raw.items()}


def language_schedule(available: dict[str, int], steps: int, strategy: str, temperature: float, seed: int) -> list[str]:
    """The language of each of ``steps`` steps; a language is used at most ``available[lang]`` times.

    ``round_robin`` cycles through the languages in order; ``proportional`` and ``temperature`` draw
    each step from the weights of ``language_weights`` (seeded), renormalised over the languages
    that still have batches left.
    """
    left = {lang: n for lang, n in available.items() if n > 0}
    weights = language_weights(left, strategy, temperature)
    rng = random.Random(seed)
    order, out, cursor = list(left), [], 0
    while len(out) < steps and left:
        if strategy == "round_robin":
            while order[cursor % len(order)] not in left:
                cursor += 1
            lang = order[cursor % len(order)]
            cursor += 1
        else:
            names = list(left)
            lang = rng.choices(names, weights=[weights[x] for x in names])[0]
        out.append(lang)
        left[lang] -= 1
        if not left[lang]:
            del left[lang]
    return out


def plan_steps(cfg: Config, train_rows: dict[str, int]) -> Plan:
    """Steps from the sample budget and the global batch; equal rows per worker, whole batches only."""
    batch, workers = cfg.train.batch_size, cfg.cluster.workers
    batches = {lang: train_rows.get(lang, 0) // workers // batch for lang in cfg.data.languages}
    total_rows = sum(train_rows.values())
    budget = min(total_rows, cfg.data.max_samples or total_rows) // workers // batch
    steps = min(budget, sum(batches.values()))
    if steps == 0:
        raise DataError(
            f"{total_rows} valid training rows cannot fill one batch of {batch} on each of {workers} workers"
        )
    d = cfg.data
    schedule = language_schedule(batches, steps, d.language_sampling, d.language_temperature, cfg.train.seed)
    used = Counter(schedule)
    languages = {lang: {"rows_per_worker": used[lang] * batch, "steps": used[lang]} for lang in cfg.data.languages}
    return Plan(
        rows_per_worker=steps * batch,
        steps_per_epoch=steps,
        max_steps=steps * cfg.train.epochs,
        languages=languages,
        schedule=schedule,
    )

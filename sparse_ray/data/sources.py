"""Where a language's CornStack shards live: the bundled sample, a directory, ``s3://`` or ``hf://``.

Everything here runs on the driver before Ray starts, so a wrong location fails in seconds with one
line (:class:`DataError`), never inside a read task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from sparse_ray.config import Config
from sparse_ray.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample"
SHARD_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
HUB_REPO = "hf://datasets/nomic-ai/cornstack-{language}-v1"


@dataclass
class Source:
    """The shards of one language."""

    language: str
    root: str
    files: list[str]
    filesystem: Any = None  # pyarrow filesystem for remote roots, None for local paths


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

"""``sparse-ray data mirror``: copy one language's CornStack shards to S3 (or any fsspec target).

A cluster then trains from the mirror (``--data s3://bucket/prefix``) and never touches the hub.
Layout written: ``<to>/<language>/<shard path relative to the source root>``, the layout
``--data`` expects. Resumable: a shard already present with the same size is skipped; anything
else is copied again, streaming in bounded chunks (never a whole shard in memory). An S3 object
appears only when its upload completes; a local target is written to ``*.part`` and renamed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparse_ray.data import sources
from sparse_ray.errors import DataError

CHUNK_BYTES = 8 << 20


@dataclass
class MirrorReport:
    """What one mirror run did, shard by shard."""

    target: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_copied: int = 0


def mirror(
    language: str, to: str, source: str | None = None, progress: Callable[[str, int, int], None] | None = None
) -> MirrorReport:
    """Copy ``language``'s shards from ``source`` (None: the hub; a path, ``s3://`` or ``hf://``) to
    ``<to>/<language>``; ``progress(name, done_bytes, total_bytes)`` is called as bytes arrive."""
    try:
        src = sources.list_shards(sources.language_root(source, language, several=False), language)
    except DataError as exc:
        raise DataError(str(exc).replace("pass --data", "pass --from")) from None
    src_fs, src_root = sources.filesystem(src.root)
    dst_fs, dst_root = sources.filesystem(to)
    target = posixpath.join(dst_root.rstrip("/"), language)
    report = MirrorReport(target=f"{to.rstrip('/')}/{language}")
    base = src_root.rstrip("/") if src_fs.isdir(src_root) else posixpath.dirname(src_root)
    try:
        dst_fs.makedirs(target, exist_ok=True)
    except Exception as exc:
        raise DataError(f"cannot write to {to}: {_one_line(exc)}") from None
    for path in src.files:
        rel = posixpath.relpath(path, base)
        dest = posixpath.join(target, rel)
        size = src_fs.size(path)
        if _size_or_none(dst_fs, dest) == size:
            report.skipped.append(rel)
            continue
        _copy(src_fs, path, dst_fs, dest, size, lambda done, rel=rel, size=size: progress and progress(rel, done, size))
        report.copied.append(rel)
        report.bytes_copied += size
    return report


def _copy(src_fs: Any, path: str, dst_fs: Any, dest: str, size: int, progress: Callable[[int], Any]) -> None:
    local = "file" in dst_fs.protocol
    part = f"{dest}.part" if local else dest
    dst_fs.makedirs(posixpath.dirname(dest), exist_ok=True)
    done = 0
    try:
        with src_fs.open(path, "rb") as fin, dst_fs.open(part, "wb") as fout:
            while chunk := fin.read(CHUNK_BYTES):
                fout.write(chunk)
                done += len(chunk)
                progress(done)
    except Exception as exc:
        raise DataError(f"copying {path} to {dest} failed after {done} of {size} bytes: {_one_line(exc)}") from None
    if done != size:
        raise DataError(f"copying {path}: read {done} bytes, the source listed {size}; run mirror again")
    if local:
        dst_fs.mv(part, dest)


def _size_or_none(fs: Any, path: str) -> int | None:
    try:
        return fs.size(path) if fs.exists(path) else None
    except FileNotFoundError:
        return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

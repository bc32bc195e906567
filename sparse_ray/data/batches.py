"""Worker side: whole training batches from per-language row streams, following the plan's schedule.

Data contract: each input stream yields rows (dicts) of one language with at least the training
columns ``anchor, positive, negative_1..k``; :func:`scheduled_batches` yields lists of exactly
``size`` such rows, the i-th list from the language ``schedule[i]`` names. With ``dedup`` no text
appears twice among the anchors, positives and negatives of one batch (the streaming equivalent of
sentence-transformers' NO_DUPLICATES batch sampler): a clashing row waits in a small pending queue
for a later batch of its language. When the queue is full, or the stream ends with the batch not
yet full, the oldest waiting row is placed anyway and counted in ``stats["duplicates_admitted"]``:
every rank must produce the same number of batches, so a batch is never left short.

Duplicates across ranks (one global batch) cannot be seen here (each rank sees its own shard): the
objective masks them instead (``worker/loss.py``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any


class Batcher:
    """Batches of one language's rows, without duplicate texts inside a batch (see the module contract);
    a batch is shorter than ``size`` only when the stream has ended."""

    def __init__(
        self, rows: Iterator[dict[str, Any]], size: int, text_columns: tuple[str, ...], dedup: bool, stats: Counter
    ) -> None:
        self.rows, self.size, self.cols, self.dedup, self.stats = rows, size, text_columns, dedup, stats
        self.pending: deque[dict[str, Any]] = deque()
        self.max_pending = max(4 * size, 64)

    def next_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(len(self.pending)):  # rows that waited get the first chance
            row = self.pending.popleft()
            if len(batch) < self.size and self._fits(row, seen):
                self._add(row, batch, seen)
            else:
                self.pending.append(row)
        while len(batch) < self.size:
            row = next(self.rows, None)
            if row is None:
                break
            if self._fits(row, seen):
                self._add(row, batch, seen)
                continue
            self.stats["rows_deferred"] += 1
            self.pending.append(row)
            if len(self.pending) > self.max_pending:
                self._admit(batch, seen)
        while len(batch) < self.size and self.pending:
            self._admit(batch, seen)
        return batch  # shorter than size only when the stream has ended

    def _fits(self, row: dict[str, Any], seen: set[str]) -> bool:
        return not self.dedup or not any(row[c] in seen for c in self.cols)

    def _add(self, row: dict[str, Any], batch: list[dict[str, Any]], seen: set[str]) -> None:
        batch.append(row)
        seen.update(row[c] for c in self.cols)

    def _admit(self, batch: list[dict[str, Any]], seen: set[str]) -> None:
        self.stats["duplicates_admitted"] += 1
        self._add(self.pending.popleft(), batch, seen)


def scheduled_batches(
    streams: dict[str, Iterable[dict[str, Any]]],
    schedule: list[str],
    size: int,
    text_columns: tuple[str, ...],
    dedup: bool,
    stats: Counter,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(language, batch)`` for every entry of ``schedule`` (see the module contract)."""
    batchers: dict[str, Batcher] = {}
    for lang in schedule:
        if lang not in batchers:  # a language's stream is opened when the schedule first needs it
            batchers[lang] = Batcher(iter(streams[lang]), size, text_columns, dedup, stats)
        batch = batchers[lang].next_batch()
        assert len(batch) == size, "the plan never schedules more batches than a language's rows fill"
        yield lang, batch

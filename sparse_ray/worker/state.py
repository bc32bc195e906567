"""What one worker's train loop shares: :class:`WorkerState`, created by ``loop.train_loop``.

The trainer's hooks (callbacks, the collator), the Hugging Face row generator and the final
report all read and update it; nothing in ``worker/`` keeps module-level mutable state.

Why the row generator gets the state as an argument that pickles to almost nothing: Hugging Face
``datasets`` hashes a generator and its ``gen_kwargs`` with dill to name a cache, which would
pickle Ray's shard iterators. ``__getstate__`` therefore hands out the rank only. Nothing copies
the state through pickle: the generator runs in this process, in the trainer's main thread.
"""

from __future__ import annotations

import resource
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sparse_ray.worker.watchdog import Watchdog


@dataclass
class EarlyStart:
    """One language's pipeline, asked for its first batch in a background thread (``feed``)."""

    epoch: int
    thread: threading.Thread | None = None
    batches: Iterator[Any] | None = None
    first: Any = None
    error: BaseException | None = None


@dataclass
class StepTimes:
    """Step-end times and cumulative stage seconds (reported with the final metrics; benchmarks)."""

    train_begin_wall: float | None = None
    begin: float = 0.0
    steps: list[dict[str, float]] = field(default_factory=list)


#: The batch counts of a rank's ``record``: rows the batcher deferred or admitted as duplicates,
#: batches that mixed languages, batches cut at ``train.long_seq_length``.
BATCH_COUNTS = ("rows_deferred", "duplicates_admitted", "mixed_batches", "long_batches")


@dataclass
class WorkerState:
    """The shared state of one worker (see the module docstring)."""

    rank: int
    """This worker's world rank."""
    batch_size: int
    """Rows per device per step (this worker's slots' parts together)."""
    dog: Watchdog
    """The watchdog: stage marks, heartbeats, and the stage seconds of the step-time breakdown."""
    slot_batch: int = 0
    """Rows each data slot contributes per step; 0: ``batch_size`` (one slot per worker)."""
    fault: str = ""
    """Fault injection spec (tests only)."""
    shards: dict[str, Any] = field(default_factory=dict)
    """This worker's Ray Data shard of each language."""
    schedule: tuple[str, ...] = ()
    """The language of every step of one epoch."""
    dedup: bool = True
    """No text twice within a batch (``data.batches``)."""
    seq_lengths: tuple[int, int, int] = (0, 0, 0)
    """``(short, long, first long step)``: texts of steps before the (1-based) first long step are
    cut at ``short`` tokens, from it on at ``long`` (``train.long_seq_length``); all zero: the
    model's own ``max_seq_length`` throughout."""
    epoch: int = 0
    """The epoch the row generator starts next."""
    skip_steps: int = 0
    """Steps of that epoch a resumed run already trained (replayed without tokenising)."""
    counters: Counter = field(default_factory=Counter)
    """Counts only: ``rows``, ``rows:<lang>``, ``batches:<lang>``, ``tokens``, ``mixed_batches``,
    the batcher's ``rows_deferred`` and ``duplicates_admitted``, and the objective's
    ``masked_duplicates`` (candidates masked as copies of an anchor's positive, ``loss``)."""
    early: dict[tuple[str, int], EarlyStart] = field(default_factory=dict)
    """Per (language, slot): the coming epoch's pipeline, started before the model is built."""
    log_rows: bool = False
    """Keep each step's rows for the row log (tests only)."""
    step_rows: list[list[dict[str, Any]]] = field(default_factory=list)
    """Row accounting (``plan.row_log`` only): the batches handed out since the last step end."""
    preempted_at: int | None = None
    """The step at which a preemption checkpoint was written in this attempt (once per attempt)."""
    times: StepTimes = field(default_factory=StepTimes)

    def __post_init__(self) -> None:
        self.slot_batch = self.slot_batch or self.batch_size

    def __getstate__(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def record(self) -> dict[str, Any]:
        """This rank's counters for the final report (gathered from every rank by ``summary``)."""
        c = self.counters
        return {
            "rows": c["rows"],
            # peak resident memory of this worker process (includes mapped object-store pages)
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "masked_duplicates": c["masked_duplicates"],
            # seconds in each marked stage and call over the whole run (rank skew shows as collective time)
            "spent": dict(self.dog.spent) | dict(self.dog.by_call),
            "fused_head": bool(c["fused_head"]),
            "per_language": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("rows:")},
            "batching": {key: c[key] for key in BATCH_COUNTS}
            | {"batches": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("batches:")}},
        }

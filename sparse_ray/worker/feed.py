"""Worker side of the data path: this worker's Ray Data shards → rows for the trainer, batch by batch.

Contract: :func:`rows` yields dicts with exactly the plan's columns plus ``language`` (and the
teacher's ``label`` where the plan has one), in whole
batches of ``batch_size`` rows along the plan's language schedule (``data.batches``). A batch is
the concatenation of this worker's data slots' parts (``slot_batch`` rows each, slot order;
``data/slots.py``), each slot shuffled per epoch with a seeded local buffer. Ray Data runs with
``preserve_order``, so every slot's stream is a function of the seed and the epoch: a resumed run
(on any worker count) replays, in every slot, the parts of the steps already trained (without
tokenising them) and continues the same streams.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from sparse_ray.data.batches import scheduled_batches
from sparse_ray.worker.state import EarlyStart, WorkerState


def shard_batches(state: WorkerState, lang: str, slot: int, epoch: int, buffer: int, seed: int) -> Iterator[Any]:
    """The pyarrow batches of one language's data slot ``slot`` (the i-th of this worker's) for ``epoch``."""
    return iter(
        state.shards[lang]
        .iterators[slot]
        .iter_batches(
            batch_size=256,
            batch_format="pyarrow",
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=seed + epoch if buffer else None,
        )
    )


def start_pipelines(state: WorkerState, buffer: int, seed: int, epoch: int | None = None) -> None:
    """Ask every data slot of every language for its first batch of ``epoch`` (default: the next
    one) now, one background thread each; slots already started for that epoch are left alone.

    Ray Data starts a streaming split's read tasks when a worker first asks it for rows. Asked
    before the model is built, that start-up (seconds on a fresh cluster) overlaps model load and
    DeepSpeed init instead of following them. It is also required at every epoch: a split's epoch
    starts only when *all* its consumers ask (a barrier in Ray's split coordinator), and a worker
    holding two slots of one split would otherwise wait in the first for the second it has not
    asked yet. The main thread takes the iterators over in :func:`epoch_batches`; nothing here
    touches the watchdog, whose stage marks belong to the main thread.
    """
    epoch = state.epoch if epoch is None else epoch
    for lang, shard in state.shards.items():
        for slot in range(len(shard.iterators)):
            started = state.early.get((lang, slot))
            if started is not None and started.epoch == epoch:
                continue
            early = EarlyStart(epoch=epoch)

            def pull(lang: str = lang, slot: int = slot, early: EarlyStart = early) -> None:
                try:
                    early.batches = shard_batches(state, lang, slot, early.epoch, buffer, seed)
                    early.first = next(early.batches, None)
                except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
                    early.error = exc

            early.thread = threading.Thread(target=pull, name=f"sparse-ray-start-{lang}-{slot}", daemon=True)
            early.thread.start()
            state.early[(lang, slot)] = early


def epoch_batches(state: WorkerState, lang: str, slot: int, epoch: int, buffer: int, seed: int) -> Iterator[Any]:
    """A slot's batches for ``epoch``: the pipeline started early if it was this epoch's."""
    early = state.early.pop((lang, slot), None)
    if early is None or early.epoch != epoch:
        return shard_batches(state, lang, slot, epoch, buffer, seed)
    assert early.thread is not None, "start_pipelines starts a thread for every early pipeline"
    early.thread.join()
    if early.error is not None:
        raise early.error
    assert early.batches is not None
    return itertools.chain([] if early.first is None else [early.first], early.batches)


def language_rows(
    state: WorkerState,
    lang: str,
    slot: int,
    cols: tuple[str, ...],
    epoch: int,
    buffer: int,
    seed: int,
    label: bool = False,
) -> Iterator[dict[str, Any]]:
    """One slot's rows of one language, as dicts with exactly ``cols``, ``language`` and, with
    ``label``, the teacher's ``label``."""
    keep = [*cols, *(["label"] if label else []), "language"]
    with state.dog.stage_of("data"):
        batches = epoch_batches(state, lang, slot, epoch, buffer, seed)
    while True:
        with state.dog.stage_of("data"):
            batch = next(batches, None)
        if batch is None:
            return
        yield from batch.select(keep).to_pylist()


def rows(
    state: WorkerState, cols: tuple[str, ...], buffer: int, seed: int, label: bool = False
) -> Iterator[dict[str, Any]]:
    """The Hugging Face generator: one epoch of this worker's rows (see the module contract)."""
    epoch, skip = state.epoch, state.skip_steps
    state.epoch, state.skip_steps = epoch + 1, 0
    start_pipelines(state, buffer, seed, epoch)  # every slot together (see start_pipelines)
    for step, (lang, batch) in enumerate(slot_batches(state, cols, epoch, buffer, seed, label)):
        trained_at = epoch * len(state.schedule) + step + 1  # the (1-based) optimizer step of this batch
        if step < skip:
            state.counters["rows_replayed"] += len(batch)
            continue
        if state.log_rows:
            state.step_rows.append(batch)
        if state.fault.startswith("slow:"):  # tests only: ``slow:0.3`` makes each step 0.3 s longer
            time.sleep(float(state.fault.split(":")[1]))
        for row in batch:
            if state.fault:
                with state.dog.stage_of("data"):
                    injected_stall(state)
            state.counters["rows"] += 1
            state.counters[f"rows:{lang}"] += 1
            yield row | {"step": trained_at}


def slot_batches(
    state: WorkerState, cols: tuple[str, ...], epoch: int, buffer: int, seed: int, label: bool = False
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(language, device batch)`` per step: this worker's slots' parts of the step, concatenated."""
    slots = len(next(iter(state.shards.values())).iterators)
    per_slot = [
        scheduled_batches(
            {lang: language_rows(state, lang, slot, cols, epoch, buffer, seed, label) for lang in state.shards},
            list(state.schedule),
            state.slot_batch,
            cols,
            state.dedup,
            state.counters,
        )
        for slot in range(slots)
    ]
    for parts in zip(*per_slot, strict=True):
        yield parts[0][0], [row for _, part in parts for row in part]


def injected_stall(state: WorkerState) -> None:
    """Fault injection (tests only): ``SPARSE_RAY_FAULT=stall:rank=R:step=S`` starves rank R of data."""
    if not state.fault.startswith("stall:"):
        return
    want = dict(part.split("=") for part in state.fault.split(":")[1:])
    if int(want["rank"]) == state.rank and state.counters["rows"] >= int(want["step"]) * state.batch_size:
        while True:
            time.sleep(0.2)


def timed_collator(state: WorkerState, collate: Any, model: Any) -> Any:
    """The trainer's collator (it tokenises), timed as the ``tokenize`` stage; counts tokens, and
    counts the batches per language (and any batch that mixes languages) as the model sees them.
    Cuts each batch's texts at the length of the step it trains (``WorkerState.seq_lengths``):
    the rows carry that step, so prefetching and resumes do not shift the schedule."""

    def timed(batch_rows: list[dict[str, Any]]) -> Any:
        steps = {row.pop("step") for row in batch_rows}
        assert len(steps) == 1, f"a device batch holds the rows of one step, got steps {sorted(steps)}"
        short, long, first_long = state.seq_lengths
        if long:
            is_long = steps.pop() >= first_long
            model.max_seq_length = long if is_long else short
            state.counters["long_batches"] += is_long
        langs = {row.pop("language") for row in batch_rows}
        state.counters["mixed_batches"] += len(langs) > 1
        for lang in langs:
            state.counters[f"batches:{lang}"] += 1
        with state.dog.stage_of("tokenize"):
            batch = collate(batch_rows)
        state.counters["tokens"] += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        return batch

    return timed

"""The worker's row feed without a cluster: early pipeline start, epochs, resume skip, counters.

The real pipeline start is exercised by every training test; here the hand-over between the
background thread and the main thread is checked on stand-in shards with known batches.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from sparse_ray.data.slots import SlotShard, slots_of
from sparse_ray.worker.feed import epoch_batches, rows, start_pipelines
from sparse_ray.worker.state import WorkerState
from sparse_ray.worker.watchdog import Watchdog


class _Shard:
    """Stands in for a Ray Data shard: ``iter_batches`` yields the epoch's batches, or fails."""

    def __init__(self, fail: bool = False, table: pa.Table | None = None) -> None:
        self.fail, self.calls, self.table = fail, 0, table

    def iter_batches(self, **kw):
        self.calls += 1
        if self.fail:
            raise RuntimeError("read task failed")
        if self.table is not None:
            return iter([self.table])
        return iter([f"seed{kw['local_shuffle_seed']}-b{i}" for i in range(3)])


def _state(**shards) -> WorkerState:
    slots = {lang: SlotShard(0, [shard]) for lang, shard in shards.items()}
    return WorkerState(rank=0, batch_size=2, dog=Watchdog(0, 0), shards=slots, epoch=2)


def test_started_pipeline_is_handed_over_whole_for_its_epoch_only():
    state = _state(python=_Shard(), go=_Shard(fail=True))
    start_pipelines(state, buffer=8, seed=10)
    # the first batch was pulled in the background; the main thread sees every batch, in order
    assert list(epoch_batches(state, "python", 0, 2, 8, 10)) == ["seed12-b0", "seed12-b1", "seed12-b2"]
    assert state.shards["python"].iterators[0].calls == 1
    # a later epoch starts its own pipeline
    assert list(epoch_batches(state, "python", 0, 3, 8, 10))[0] == "seed13-b0"
    assert state.shards["python"].iterators[0].calls == 2
    # a failure in the background thread surfaces where the rows are asked for
    with pytest.raises(RuntimeError, match="read task failed"):
        epoch_batches(state, "go", 0, 2, 8, 10)


def test_pipeline_started_for_another_epoch_is_not_used():
    state = _state(python=_Shard())
    start_pipelines(state, buffer=8, seed=10)
    assert list(epoch_batches(state, "python", 0, 3, 8, 10)) == ["seed13-b0", "seed13-b1", "seed13-b2"]
    assert ("python", 0) not in state.early


def _table(n: int) -> pa.Table:
    texts = [f"t{i}" for i in range(n)]
    return pa.table({"anchor": texts, "positive": [f"p{t}" for t in texts], "language": ["python"] * n})


def test_rows_follow_the_schedule_skip_resumed_steps_and_count_once():
    state = _state(python=_Shard(table=_table(6)))
    state.schedule, state.skip_steps = ("python",) * 3, 1
    got = list(rows(state, ("anchor", "positive"), buffer=0, seed=0))
    # step 0 was trained before the resume: replayed, not fed; the epoch advances, the skip is used up
    assert [r["anchor"] for r in got] == ["t2", "t3", "t4", "t5"]
    assert state.epoch == 3 and state.skip_steps == 0
    assert state.counters["rows"] == 4 and state.counters["rows:python"] == 4
    assert state.record()["per_language"] == {"python": 4}


def test_a_worker_with_two_slots_trains_both_parts_of_each_step_and_skips_in_each():
    """Slot k holds rows s{k}-0, s{k}-1, ...; a step takes 2 rows from each slot (slot order). A
    group of 1 resuming after step 1 of a group of 2 replays step 0 in both slots: the rows it
    trains are exactly what the two workers of the old group would have trained from step 1 on."""

    def slot(k: int, n: int = 6) -> pa.Table:
        texts = [f"s{k}-{i}" for i in range(n)]
        return pa.table({"anchor": texts, "positive": [f"p{t}" for t in texts], "language": ["python"] * n})

    shard = SlotShard(0, [_Shard(table=slot(0)), _Shard(table=slot(1))])
    state = WorkerState(rank=0, batch_size=4, slot_batch=2, dog=Watchdog(0, 0), shards={"python": shard}, epoch=0)
    state.schedule, state.skip_steps = ("python",) * 3, 1
    got = [r["anchor"] for r in rows(state, ("anchor", "positive"), buffer=0, seed=0)]
    assert got == ["s0-2", "s0-3", "s1-2", "s1-3", "s0-4", "s0-5", "s1-4", "s1-5"]
    assert state.counters["rows_replayed"] == 4 and state.counters["rows"] == 8
    assert list(slots_of(1, 2, 4)) == [2, 3] and list(slots_of(0, 1, 4)) == [0, 1, 2, 3]


def test_state_pickles_to_its_rank_only_for_hugging_face_hashing():
    import pickle

    state = _state(python=_Shard())
    assert pickle.loads(pickle.dumps(state)).__dict__ == {"rank": 0}


def test_rows_carry_the_optimizer_step_they_train():
    state = _state(python=_Shard(table=_table(6)))
    state.schedule, state.skip_steps = ("python",) * 3, 1
    got = list(rows(state, ("anchor", "positive"), buffer=0, seed=0))
    # epoch 2 of 3 steps each: its steps are 7, 8, 9; step 7 was trained before the resume
    assert [r["step"] for r in got] == [8, 8, 9, 9]


def test_collator_cuts_each_batch_at_the_length_of_the_step_it_trains(tiny_base, tmp_path):
    """``train.long_seq_length``: steps before the first long one are cut short, the rest long, by
    the step each row carries (not by when the batch is collated); the saved model keeps the length."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    from sparse_ray.model import build_model
    from sparse_ray.worker.feed import timed_collator

    model = build_model("splade", tiny_base, 8)
    state = WorkerState(rank=0, batch_size=2, dog=Watchdog(0, 0), seq_lengths=(8, 24, 3))
    collate = timed_collator(state, SparseEncoderDataCollator(model.preprocess), model)
    text = " ".join(["def parse(path): return open(path).read()"] * 10)

    def batch(*steps: int) -> list[dict]:
        return [{"anchor": text, "positive": text, "language": "python", "step": s} for s in steps]

    widths = [collate(batch(s, s))["anchor_input_ids"].shape[1] for s in (1, 2, 4, 3, 2)]
    assert widths == [8, 8, 24, 24, 8]
    assert state.counters["tokens"] == 2 * 2 * (8 + 8 + 24 + 24 + 8) and state.counters["long_batches"] == 2
    with pytest.raises(AssertionError, match="one step"):
        collate(batch(2, 3))
    collate(batch(3, 3))
    model.save(str(tmp_path))
    assert SparseEncoder(str(tmp_path), device="cpu").max_seq_length == 24

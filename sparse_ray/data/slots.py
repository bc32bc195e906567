"""Data slots: the rows of every global step are fixed by the data, not by the worker count.

Contract: each training dataset is split into ``slots`` streams (Ray Data's ``streaming_split``
with ``equal=True``; with ``preserve_order`` a split's rows depend only on the data, the seed and
the number of splits). Step ``t`` of an epoch takes the ``t``-th ``slot_batch`` rows of every slot;
worker ``r`` of ``W`` trains slots ``r·S/W … (r+1)·S/W - 1`` (``W`` divides ``S``). A group of any
allowed size therefore trains the same rows at the same step, and a resize (or a resume on another
worker count) continues the epoch by skipping, in every slot, the rows of the steps already
trained: no row is skipped or trained twice.

:class:`SlotDataConfig` replaces Ray Train's ``DataConfig`` on the driver side (Ray Train calls
``configure`` once per worker group, with its size); workers receive a :class:`SlotShard` per
dataset from ``ray.train.get_dataset_shard``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.train import DataConfig


@dataclass
class SlotShard:
    """The data slots of one worker for one dataset: ``first`` is the index of ``iterators[0]``."""

    first: int
    iterators: list[Any]

    @property
    def slots(self) -> list[int]:
        return list(range(self.first, self.first + len(self.iterators)))


def slots_of(rank: int, world: int, slots: int) -> range:
    """The slots worker ``rank`` of ``world`` trains (contiguous, ``slots / world`` of them)."""
    assert slots % world == 0, f"{world} workers cannot share {slots} data slots"
    per = slots // world
    return range(rank * per, (rank + 1) * per)


class SlotDataConfig(DataConfig):
    """``DataConfig`` that splits every dataset into ``slots`` streams and gives each worker its
    slots (see the module contract); ``execution_options`` as in ``DataConfig``."""

    def __init__(self, slots: int, execution_options: Any = None) -> None:
        super().__init__(execution_options=execution_options, enable_shard_locality=False)
        self.slots = slots

    def configure(
        self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            ds = dataset.copy(dataset)
            if ds.name is None:
                ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            splits = ds.streaming_split(self.slots, equal=True)
            for rank in range(world_size):
                mine = slots_of(rank, world_size, self.slots)
                output[rank][name] = SlotShard(mine.start, [splits[k] for k in mine])
        return output

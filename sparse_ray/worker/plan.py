"""The typed border between driver and workers: one frozen :class:`WorkerPlan` per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparse_ray.config import Config

#: Fault injection for tests, set on the driver, e.g. ``stall:rank=1:step=2`` (rank 1 stops getting
#: data after step 2); the driver copies it into the plan.
FAULT_ENV = "SPARSE_RAY_FAULT"
#: Row accounting for tests, set on the driver: a directory where every rank appends, per step it
#: trains, the step and a key of each row's anchor (``worker.callbacks.RowLog``).
ROW_LOG_ENV = "SPARSE_RAY_TEST_ROW_LOG"


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Ray Train worker needs: the validated config as is (Ray pickles dataclasses),
    plus what the driver derived from the data. Built once, by ``driver.fit.worker_plan``."""

    config: Config
    """The run's config, validated on the driver; workers never re-validate or re-read it."""
    base_model: str
    """The base checkpoint resolved to a local path or hub id (``config.model.base`` is a key)."""
    columns: tuple[str, ...]
    """Training columns in the order the loss reads them: anchor, positive, negative_1..k."""
    max_steps: int
    """Optimizer steps of the whole run (every epoch)."""
    steps_per_epoch: int
    """Steps of one epoch; the data position of a checkpoint is ``step % steps_per_epoch``."""
    rows_per_slot: int
    """Rows each data slot holds per epoch (``data/slots.py``)."""
    slots: int
    """Data slots per global batch; a group of W workers gives each ``slots / W`` of them."""
    slot_batch: int
    """Rows a slot contributes to every global batch."""
    schedule: tuple[str, ...]
    """The language of every step of one epoch, the same on every rank."""
    deepspeed: dict[str, Any] | None
    """The DeepSpeed config (``configs/deepspeed/zeroN.json``), None for plain DDP."""
    label: bool = False
    """Rows carry a teacher's ``label`` column (list of floats; a distillation loss)."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Environment variables a worker sets (where not set already) before importing libraries."""
    holdout: tuple[dict[str, Any], ...] = ()
    """Hold-out rows evaluated during training (every rank evaluates; empty: no evaluation)."""
    data_table: dict[str, Any] = field(default_factory=dict)
    """The run's data table (rows read, trained, held out, cut, dropped per language) for the trackers."""
    fault: str = ""
    """Fault injection spec (tests only, see ``FAULT_ENV``)."""
    row_log: str = ""
    """Row accounting directory (tests only, see ``ROW_LOG_ENV``); empty: off."""
    tensorboard_dir: str | None = None
    """Where rank 0 writes tracker logs; None for remote outputs."""

    @property
    def global_batch(self) -> int:
        return self.config.global_batch

    def device_batch(self, world: int) -> int:
        """Rows per device per step in a group of ``world`` workers (the global batch is fixed)."""
        assert self.slots % world == 0, f"{world} workers cannot share {self.slots} data slots"
        return self.slot_batch * (self.slots // world)

    def seq_lengths(self) -> tuple[int, int, int]:
        """``WorkerState.seq_lengths``: (short, long, first long step) or zeros."""
        long = self.config.train.long_seq_length
        if not long:
            return (0, 0, 0)
        first = self.max_steps - self.config.long_steps(self.max_steps) + 1
        return (self.config.model.max_seq_length, long, first)

    @property
    def use_gpu(self) -> bool:
        return self.config.use_gpu

    @property
    def languages(self) -> list[str]:
        """The languages this run trains on: one Ray dataset ``train_<language>`` each."""
        return sorted(set(self.schedule))

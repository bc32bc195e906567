"""Checkpoints on workers: the run position written into each one, and resuming from the latest.

A checkpoint is the trainer's own folder (model in SparseEncoder form, optimizer, scheduler, RNG)
plus ``rundir.STATE_FILE``: global step, data position (epoch, steps into it), every attempt so
far, and whether it is the final model. The run record (``run``) is a plain dict because it is
JSON on disk: ``{"global_step", "final", "attempts": [{"started", "from_step"}, ...], ...}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from sparse_ray.rundir import STATE_FILE, group_path, stall_path
from sparse_ray.worker.plan import WorkerPlan
from sparse_ray.worker.state import WorkerState


def write_state(
    folder: str,
    plan: WorkerPlan,
    run: dict[str, Any],
    step: int,
    final: bool,
    metrics: dict | None = None,
    reason: str = "periodic",
) -> None:
    """Record the run's position (and, at the end, its metrics) in a checkpoint folder (rank 0
    calls it); ``reason``: ``periodic``, ``preemption`` or ``final``."""
    workers = run["attempts"][-1]["workers"]
    record = {
        "global_step": step,
        "final": final,
        "reason": "final" if final else reason,
        "workers": workers,
        "rows_trained": step * plan.global_batch,
        "rows_trained_per_rank": step * plan.device_batch(workers),
        "epoch": step // plan.steps_per_epoch,
        "steps_into_epoch": step % plan.steps_per_epoch,
        "attempts": run["attempts"],
        "metrics": metrics or {},
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, STATE_FILE), "w") as fh:
        json.dump(record, fh, indent=2)


def restore(state: WorkerState, world: int, global_batch: int) -> tuple[str | None, dict[str, Any]]:
    """The latest checkpoint of this run, downloaded, and the run record to continue from.

    Returns ``(checkpoint folder or None, run)``; ``run["attempts"]`` lists every start of the
    worker group, this one included, with the step it started from. Sets the data position of
    ``state`` (epoch, steps to skip) so the row stream continues where the checkpoint left it.
    The attempt records its group size (``workers``), the checkpoint it resumed from (``from``:
    its ``reason``) and ``rows_trained_in_epoch``, the rows the lineage trained in the current
    epoch, which the new group must replay exactly (``ResumeAccount``).
    """
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    checkpoint = ray.train.get_checkpoint()
    attempt: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "started_ns": broadcast_from_rank_zero(time.time_ns()),  # the group's id, the same on every rank
        "from_step": 0,
        "workers": world,
        "from": None,
        "rows_trained_in_epoch": 0,
    }
    if checkpoint is None:
        return None, {"attempts": [attempt], "final": False, "global_step": 0}
    local = tempfile.mkdtemp(prefix="sparse-ray-resume-")
    with state.dog.stage_of("data", "checkpoint download"):
        checkpoint.to_directory(local)
    with open(os.path.join(local, STATE_FILE)) as fh:
        run = json.load(fh)
    # checkpoints written before the language schedule recorded rows, not steps, into the epoch
    into = run.get("steps_into_epoch", run.get("rows_into_epoch", 0) // state.batch_size)
    state.epoch, state.skip_steps = run.get("epoch", 0), into
    attempt |= {"from_step": run["global_step"], "from": run.get("reason", "periodic")}
    attempt["rows_trained_in_epoch"] = into * global_batch
    run["attempts"] = [*run["attempts"], attempt]
    return local, run


def record_group(attempt: dict[str, Any]) -> None:
    """Rank 0: write this group start's record (``rundir.group_path``) into the run's storage."""
    _write_to_storage(lambda root: group_path(root, attempt["started_ns"]), attempt)


def record_stall(record: dict[str, Any]) -> None:
    """Write a watchdog record into the run's storage, where the driver looks for it."""
    _write_to_storage(lambda root: stall_path(root, record["rank"]), record)


def _write_to_storage(path_in: Any, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path_in(<Ray Train's experiment folder>)``, local or remote."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    path = path_in(storage.experiment_fs_path)
    storage.storage_filesystem.create_dir(path.rsplit("/", 1)[0])
    with storage.storage_filesystem.open_output_stream(path) as fh:
        fh.write(json.dumps(record).encode())

"""Ray Train on the driver: the worker plan, the TorchTrainer around ``worker.loop.train_loop``, and
what happens when workers fail (a failure log with back-off, one-line causes)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

from sparse_ray.config import Config, deepspeed_config
from sparse_ray.data.pipeline import columns
from sparse_ray.data.plan import Plan
from sparse_ray.driver import tracking
from sparse_ray.errors import UserError
from sparse_ray.rundir import RUN_NAME, stall_records, write_json
from sparse_ray.worker.plan import FAULT_ENV, ROW_LOG_ENV, WorkerPlan

#: Ray Train's worker-group start timeout: one placement try lasts this long (Ray Train reads
#: the variable on the driver and propagates it to its controller; default 60 s).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
#: Test-only knob: "1" reserves each worker's GPUs as Ray resources (so an autoscaler scales GPU
#: node types for them) but trains on CPU with gloo, for clusters whose GPUs are declared, not real
#: (Ray's fake multi-node autoscaler). Read on the driver only.
DECLARED_GPUS_ENV = "SPARSE_RAY_TEST_DECLARED_GPUS"


def placement_tries(wait_for_workers: float) -> int:
    """Placement tries (each one worker-group start timeout long) that cover ``wait_for_workers``."""
    return max(1, math.ceil(wait_for_workers / float(os.environ.get(START_TIMEOUT_ENV, "60"))))


def declared_gpus_only(cfg: Config) -> bool:
    return cfg.use_gpu and os.environ.get(DECLARED_GPUS_ENV) == "1"


def worker_plan(
    cfg: Config, plan: Plan, base_model: str, holdout: list[dict] | None = None, data: dict | None = None
) -> WorkerPlan:
    """Everything the train loop needs (the typed config plus what the driver derived); ``data``:
    the data table (``DataStats.to_dict()``) the trackers log."""
    worker_env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **tracking.worker_env(cfg)}
    on_cpu = not cfg.use_gpu or declared_gpus_only(cfg)
    if on_cpu:
        worker_env["DS_ACCELERATOR"] = "cpu"
    cpu_twin = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, gpus_per_worker=0))
    return WorkerPlan(
        config=cpu_twin if on_cpu else cfg,
        base_model=base_model,
        columns=tuple(columns(cfg.data.num_negatives)),
        label=bool(cfg.train.distill_loss),
        max_steps=plan.max_steps,
        steps_per_epoch=plan.steps_per_epoch,
        rows_per_slot=plan.rows_per_slot,
        slots=plan.slots,
        slot_batch=plan.slot_batch,
        schedule=tuple(plan.schedule),
        deepspeed=deepspeed_config(cfg.cluster.zero),
        worker_env=worker_env,
        holdout=tuple(holdout or ()),
        data_table=data or {},
        fault=os.environ.get(FAULT_ENV, ""),
        row_log=os.environ.get(ROW_LOG_ENV, ""),
        # rank 0 writes tracker logs here; a remote (s3://) run keeps them on rank 0's node
        tensorboard_dir=None if "://" in cfg.output else os.path.join(os.path.abspath(cfg.output), "tensorboard"),
    )


def fit(
    cfg: Config, train_ds: dict[str, Any], plan: WorkerPlan, storage: str, callbacks: list[Any] | None = None
) -> Any:
    """Run the Ray Train job on one training dataset per language (each split equally across the
    workers); returns Ray's Result (metrics of rank 0, the final checkpoint). ``callbacks``: more
    Ray Train callbacks (a sweep's report to Tune)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from sparse_ray.data.slots import SlotDataConfig
    from sparse_ray.driver.capacity import worker_bundle
    from sparse_ray.driver.elastic import SlotTrainer
    from sparse_ray.worker.loop import train_loop

    resources = worker_bundle(cfg)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same seed gives the same stream, so a resume can skip exactly
    c = cfg.cluster
    trainer = SlotTrainer(
        train_loop,
        sizes=cfg.worker_sizes,
        wait_s=c.wait_for_workers,
        train_loop_config={"plan": plan},
        torch_config=TorchConfig(backend="gloo") if declared_gpus_only(cfg) else None,
        scaling_config=ScalingConfig(
            num_workers=(c.min_workers, c.workers) if cfg.elastic else c.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=c.placement,
            elastic_resize_monitor_interval_s=c.elastic_resize_monitor_interval_s,
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage,
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures,
                # placement timeouts count as controller failures, by default without limit: a lost
                # node then means waiting forever
                controller_failure_limit=placement_tries(cfg.cluster.wait_for_workers) - 1,
            ),
            # +1: the final model is a checkpoint too and must not push out the last periodic one
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints + 1),
            callbacks=[FailureLog(cfg.output, cfg.train.max_failures), *(callbacks or [])],
        ),
        datasets={f"train_{lang}": ds for lang, ds in train_ds.items()},
        dataset_config=SlotDataConfig(cfg.slots, execution_options=ingest),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; the full traceback is in the worker logs above
        stalls = stall_records(storage)
        cause = "; ".join(r["message"] for r in stalls) if stalls else root_cause(exc)
        raise UserError(f"training failed: {cause}") from None


def _failure_log_base() -> type:
    from ray.train import UserCallback

    return UserCallback


class FailureLog(_failure_log_base()):
    """Runs in Ray Train's controller: records each worker-group failure under ``<output>/failures/``
    and, when Ray Train will restart the workers, waits first (5 s, doubling, at most 60 s).

    Ray Train restarts at once; against an outage (storage unreachable, a node rebooting) immediate
    restarts fail immediately too and use up ``train.max_failures`` within seconds.
    """

    def __init__(self, output: str, max_failures: int) -> None:
        self.output = output
        self.max_failures = max_failures
        self.seen = 0

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.seen += 1
        try:
            self._write(worker_exceptions)
        except Exception as exc:  # the output may be what failed (S3 down): never break recovery over a log
            logging.getLogger(__name__).warning("could not record a failure in %s: %s", self.output, exc)
        if self.max_failures < 0 or self.seen <= self.max_failures:
            time.sleep(min(60.0, 5.0 * 2 ** (self.seen - 1)))

    def _write(self, worker_exceptions: dict[int, Exception]) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "ranks": sorted(worker_exceptions),
            "errors": {str(rank): root_cause(exc) for rank, exc in worker_exceptions.items()},
        }
        write_json(f"{self.output.rstrip('/')}/failures", f"{time.time_ns()}.json", record)


def root_cause(exc: BaseException) -> str:
    """The last line of the innermost error message (Ray nests worker tracebacks in its message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith(" ")]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors or lines or [type(exc).__name__])[-1][:300]

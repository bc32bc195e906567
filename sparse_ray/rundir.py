"""The run directory: every file name in it, who may claim it, and how its outputs are published.

Layout of ``<output>`` (local or ``s3://``)::

    run-config.json     the config a restart must match to resume (written when the run starts)
    run.json            the run's record; written last, so it marks the run finished
    model/              the final model in SparseEncoder form (TRAINING_LOG and STATE_FILE inside)
    failures/*.json     worker-group failures the run survived or died of
    ray/train/          Ray Train's storage: checkpoints (step-NNNNNNNN/, final/) and stalls/
    tensorboard/        tracker logs of rank 0 (local outputs only)
    wandb/              rank 0's W&B run, offline or synced (local outputs without WANDB_DIR)
    mlflow.db           MLflow store, artifacts in mlartifacts/ (local outputs without MLFLOW_TRACKING_URI)

Used by the driver, the workers (checkpoint files) and the tools (reading a finished run).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import version
from typing import Any

from sparse_ray.config import flatten
from sparse_ray.data.sources import filesystem
from sparse_ray.errors import ConfigError, UserError

#: Where a run directory keeps its final model.
MODEL_DIR = "model"
#: The run's record (config, data, plan, metrics, evaluation); its presence means "finished".
RUN_JSON = "run.json"
#: Written when a run starts: the config a restart must match to resume.
RUN_CONFIG = "run-config.json"
#: The trainer's log history (losses per logging step), saved next to the model.
TRAINING_LOG = "training_log.json"
#: In every checkpoint: global step, data position, attempts so far, whether it is the final model.
STATE_FILE = "sparse_ray_state.json"
#: Ray checkpoint directory names: periodic ones sort by step, the final model comes last.
FINAL_CHECKPOINT = "final"
#: Ray Train's run name inside ``<output>/ray``: one run per output directory, so restarting with
#: the same output finds this run's checkpoints (Ray Train V2 resumes a reused name).
RUN_NAME = "train"
#: Keys a restart may change and still resume (where it runs, not what it trains).
RESTART_MAY_CHANGE = (
    # the worker count may change: data slots and the global batch (both compared) fix what is trained
    "cluster.workers",
    "cluster.min_workers",
    "cluster.elastic_resize_monitor_interval_s",
    "train.batch_size",
    "cluster.address",
    "cluster.num_cpus",
    "cluster.wait_for_workers",
    "train.max_failures",
    "train.stall_timeout",
)


def checkpoint_name(step: int) -> str:
    """Ray checkpoint directory of a periodic checkpoint (sorts by step, before ``final``)."""
    return f"step-{step:08d}"


def storage_of(output: str) -> str:
    """Ray Train's storage path inside the run directory (absolute for local paths)."""
    if "://" in output:
        return output.rstrip("/") + "/ray"
    return os.path.join(os.path.abspath(output), "ray")


def stall_path(experiment_path: str, rank: int) -> str:
    """Where rank ``rank``'s watchdog writes its record, inside Ray Train's experiment folder."""
    return f"{experiment_path}/stalls/rank-{rank}.json"


def model_path(path: str) -> str:
    """A model directory, or a run directory (``<run>/model``), or a hub id: what to load."""
    inside = os.path.join(path, MODEL_DIR)
    return inside if os.path.isfile(os.path.join(inside, "modules.json")) else path


def claim_output(config: dict[str, Any], output: str, resume: bool) -> str:
    """Decide what this run does with its output: ``new``, ``resume`` or ``finished``.

    A restart with the same output and the same config resumes from the run's last checkpoint;
    a different config is refused (it would mix two runs' checkpoints).
    """
    fs, root = filesystem(output)
    path = f"{root}/{RUN_CONFIG}"
    try:
        exists = fs.exists(path)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot reach the output {output}: {detail}") from None
    if not exists:
        if resume:
            raise ConfigError(f"--resume: {output} holds no run to resume")
        write_json(output, RUN_CONFIG, config)
        return "new"
    with fs.open(path) as fh:
        before = dict(flatten(json.load(fh)))
    now = dict(flatten(config))
    keys = (before.keys() | now.keys()) - set(RESTART_MAY_CHANGE)
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} → {now.get(k)!r})" for k in changed[:3])
        hint = "choose another --output, or restart with the same settings to resume"
        if {"train.global_batch", "data.slots"} & set(changed):  # a resume on another worker count
            keep = " ".join(f"--set {k}={before.get(k)}" for k in ("train.global_batch", "data.slots"))
            hint = f"to resume it on another worker count keep {keep}"
        more = ", …" if len(changed) > 3 else ""
        raise ConfigError(f"{output} holds a different run (changed: {shown}{more}); {hint}")
    if before.get("cluster.workers") != now.get("cluster.workers") and now.get("cluster.zero"):
        raise ConfigError(
            f"{output} was trained on {before.get('cluster.workers')} workers with ZeRO-{now['cluster.zero']}: "
            "DeepSpeed cannot re-partition its optimizer shards for another worker count; resume on "
            f"{before.get('cluster.workers')} workers (elastic and resized runs train with --zero 0)"
        )
    return "finished" if fs.exists(f"{root}/{RUN_JSON}") else "resume"


def publish(checkpoint: Any, output: str) -> str:
    """Copy the final model from Ray's checkpoint to ``<output>/model``; returns a local copy.

    Locally the directory appears at once (written beside it, then renamed): a reader never sees
    a half-written model. On object stores, where renames are copies, ``run.json`` is written after
    the model and marks it complete.
    """
    local = tempfile.mkdtemp(prefix="sparse-ray-final-")
    checkpoint.to_directory(local)
    fs, root = filesystem(output)
    fs.makedirs(root, exist_ok=True)
    if "://" not in output:
        staging = tempfile.mkdtemp(prefix=".model-partial-", dir=root)
        shutil.copytree(local, staging, dirs_exist_ok=True)
        target = os.path.join(root, MODEL_DIR)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=".model-old-", dir=root)
            os.replace(target, os.path.join(old, MODEL_DIR))
            shutil.rmtree(old)
        os.replace(staging, target)
        return local
    for dirpath, _, files in os.walk(local):
        rel = os.path.relpath(dirpath, local)
        target = f"{root}/{MODEL_DIR}" if rel == "." else f"{root}/{MODEL_DIR}/{rel}"
        fs.makedirs(target, exist_ok=True)
        for name in files:
            fs.put_file(os.path.join(dirpath, name), f"{target}/{name}")
    return local


def write_json(location: str, name: str, payload: Any) -> None:
    """``payload`` as ``<location>/<name>`` (local or remote), indented."""
    fs, root = filesystem(location)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{name}", "w") as fh:
        json.dump(payload, fh, indent=2, default=str)


def read_json(location: str, name: str) -> Any:
    fs, root = filesystem(location)
    with fs.open(f"{root}/{name}") as fh:
        return json.load(fh)


def read_run(output: str) -> dict[str, Any]:
    """A finished run's record."""
    return read_json(output, RUN_JSON)


def json_files(location: str) -> list[dict[str, Any]]:
    """Every JSON file directly under ``location`` (local or remote), in name order; none if absent."""
    fs, root = filesystem(location)
    if not fs.exists(root):
        return []
    found = []
    # only *.json: on object stores a writer's directory marker (``groups/``) is listed too
    for path in sorted(p for p in fs.ls(root, detail=False) if p.endswith(".json")):
        with fs.open(path) as fh:
            found.append(json.load(fh))
    return found


def failures(output: str) -> list[dict[str, Any]]:
    """Worker-group failures this run survived or died of, oldest first."""
    return json_files(f"{output.rstrip('/')}/failures")


def stall_records(storage: str) -> list[dict[str, Any]]:
    """What the workers' watchdogs wrote before failing the run (``stall_path``), the cause first."""
    records = json_files(f"{storage.rstrip('/')}/{RUN_NAME}/stalls")
    # the stage that caused it first: a rank starved of data makes the others wait in a collective
    order = {"data": 0, "step": 1, "start": 2, "collective": 3}
    return sorted(records, key=lambda r: order.get(r["stage"], 9))


def group_path(experiment_path: str, started_ns: int) -> str:
    """Where rank 0 records one start of the worker group (its size, the step it resumed from)."""
    return f"{experiment_path}/groups/{started_ns}.json"


def group_records(storage: str) -> list[dict[str, Any]]:
    """Every start of the worker group, in order: also those that ended before a checkpoint
    (a group grown or lost before it saved), which the checkpoints' attempt lists cannot show."""
    return sorted(json_files(f"{storage.rstrip('/')}/{RUN_NAME}/groups"), key=lambda r: r["started_ns"])


def training_log(model_dir: str) -> list[dict[str, Any]]:
    """The trainer's log history, saved by rank 0 next to the model."""
    return read_json(model_dir, TRAINING_LOG)


def final_state(model_dir: str) -> dict[str, Any]:
    """The run state rank 0 saved with the final model: metrics, attempts, global step."""
    return read_json(model_dir, STATE_FILE)


def versions() -> dict[str, str]:
    """Versions of the packages a run or report depends on, recorded with it."""
    names = ("sparse-ray", "ray", "sentence-transformers", "transformers", "deepspeed", "torch", "datasets")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "not installed"
    return found

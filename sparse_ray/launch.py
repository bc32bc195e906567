"""Driver side of ``sparse-ray train``: resolve data, start or join Ray, fit, publish, evaluate.

Order matters for users: everything that can fail because of their input (config, data location,
base model) fails before Ray starts. The driver never holds the dataset: it streams one count pass,
hands the lazy training plan to Ray Train, and takes only the hold-out rows it evaluates on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from importlib.metadata import version
from typing import Any

from sparse_ray import data
from sparse_ray.config import Config, deepspeed_config, resolve_base_model
from sparse_ray.console import config_table, console, data_table, flatten, summary_table
from sparse_ray.errors import ConfigError, UserError
from sparse_ray.localray import init_in_process, use_local_ray_env
from sparse_ray.loop import FAULT_ENV, STATE_FILE, TRAINING_LOG, eval_point, train_loop
from sparse_ray.model import MODEL_DIR


def ray_address(cfg: Config) -> str | None:
    """The cluster to join: ``cluster.address``, else ``RAY_ADDRESS`` (set inside a Ray job), else None."""
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None


def check_local_capacity(cfg: Config) -> None:
    """A local cluster needs a CPU beyond the workers' or Ray Data never gets to read (a hang)."""
    c = cfg.cluster
    if c.num_cpus < c.workers * c.cpus_per_worker + 1:
        raise ConfigError(
            f"cluster.num_cpus={c.num_cpus} leaves no CPU for Ray Data next to {c.workers} workers; raise it"
        )
    if c.gpus_per_worker:
        import torch

        if torch.cuda.device_count() < c.workers * c.gpus_per_worker:
            raise ConfigError(
                f"{c.workers} workers × {c.gpus_per_worker} GPU need {c.workers * c.gpus_per_worker} GPUs; "
                f"this machine has {torch.cuda.device_count()} (use --gpus-per-worker 0 or --address)"
            )


def connect(cfg: Config) -> None:
    """Join the run's cluster or start a local one (kept for the life of this process)."""
    import ray

    if not ray.is_initialized():
        _init(cfg)
    check_cluster_gpus(cfg)


def probe_address(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds when nothing listens at a ``host:port`` Ray address (``ray.init`` would
    keep retrying for minutes)."""
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    if host_port in ("auto", "local") or ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def check_cluster_gpus(cfg: Config) -> None:
    """GPUs asked for must exist in the cluster: Ray would otherwise wait for them (a hang)."""
    import ray

    need = cfg.cluster.workers * cfg.cluster.gpus_per_worker
    have = int(ray.cluster_resources().get("GPU", 0))
    if need > have:
        raise ConfigError(
            f"{cfg.cluster.workers} workers × {cfg.cluster.gpus_per_worker} GPU need {need} GPUs; the Ray cluster "
            f"has {have} (start its GPU nodes first, or use --gpus-per-worker 0)"
        )


def _init(cfg: Config) -> None:
    import ray

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    address = ray_address(cfg)
    if address is None:
        check_local_capacity(cfg)
        use_local_ray_env()  # effective only if ray was not imported yet (the CLI calls it earlier)
        # a new cluster, never one found on the host
        init_in_process(cfg.cluster.num_cpus, **kwargs)
    else:
        probe_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot reach the Ray cluster at {address}: {detail}") from None
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's per-dataset progress logs would drown the training lines."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def worker_plan(cfg: Config, plan: data.Plan, base_model: str, holdout: list[dict] | None = None) -> dict[str, Any]:
    """Everything the train loop needs, as one picklable dict."""
    worker_env = {
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if not cfg.use_gpu:
        worker_env["DS_ACCELERATOR"] = "cpu"
    return {
        "config": cfg.to_dict(),
        "base_model": base_model,
        "columns": data.columns(cfg.data.num_negatives),
        "max_steps": plan.max_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "rows_per_worker": plan.rows_per_worker,
        "schedule": plan.schedule,
        "global_batch": cfg.global_batch,
        "use_gpu": cfg.use_gpu,
        "deepspeed": deepspeed_config(cfg.cluster.zero),
        "worker_env": worker_env,
        "holdout": holdout or [],
        "fault": os.environ.get(FAULT_ENV, ""),
        # rank 0 writes tracker logs here; a remote (s3://) run keeps them on rank 0's node
        "tensorboard_dir": None if "://" in cfg.output else os.path.join(os.path.abspath(cfg.output), "tensorboard"),
    }


#: Ray Train's run name inside ``<output>/ray``: one run per output directory, so restarting with
#: the same output finds this run's checkpoints (Ray Train V2 resumes a reused name).
RUN_NAME = "train"
#: Ray Train's worker-group start timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S default).
PLACEMENT_TRY_S = 60.0
#: Written when a run starts: the config a restart must match to resume.
RUN_CONFIG = "run-config.json"
#: Keys a restart may change and still resume (where it runs, not what it trains).
RESTART_MAY_CHANGE = (
    "cluster.address",
    "cluster.num_cpus",
    "cluster.wait_for_workers",
    "train.max_failures",
    "train.stall_timeout",
)


def fit(cfg: Config, train_ds: dict[str, Any], plan: dict[str, Any], storage: str) -> Any:
    """Run the Ray Train job on one training dataset per language (each split equally across the
    workers); returns Ray's Result (metrics of rank 0, the final checkpoint)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.cluster.gpus_per_worker
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same seed gives the same stream, so a resume can skip exactly
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=plan,
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.cluster.placement,
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage,
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures,
                # placement timeouts count as controller failures, by default without limit: a lost
                # node then means waiting forever
                controller_failure_limit=math.ceil(cfg.cluster.wait_for_workers / PLACEMENT_TRY_S) - 1,
            ),
            # +1: the final model is a checkpoint too and must not push out the last periodic one
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints + 1),
            callbacks=[FailureLog(cfg.output, cfg.train.max_failures)],
        ),
        datasets={f"train_{lang}": ds for lang, ds in train_ds.items()},
        dataset_config=DataConfig(execution_options=ingest),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; the full traceback is in the worker logs above
        stalls = stall_records(storage)
        cause = "; ".join(r["message"] for r in stalls) if stalls else _root_cause(exc)
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
        fs, root = data.filesystem(self.output)
        fs.makedirs(f"{root}/failures", exist_ok=True)
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "ranks": sorted(worker_exceptions),
            "errors": {str(rank): _root_cause(exc) for rank, exc in worker_exceptions.items()},
        }
        with fs.open(f"{root}/failures/{time.time_ns()}.json", "w") as fh:
            json.dump(record, fh)


def failures(output: str) -> list[dict[str, Any]]:
    """Worker-group failures this run survived or died of, oldest first."""
    return _json_files(f"{output.rstrip('/')}/failures")


def stall_records(storage: str) -> list[dict[str, Any]]:
    """What the workers' watchdogs wrote before failing the run (``loop._record_stall``)."""
    records = _json_files(f"{storage.rstrip('/')}/{RUN_NAME}/stalls")
    # the stage that caused it first: a rank starved of data makes the others wait in a collective
    order = {"data": 0, "step": 1, "start": 2, "collective": 3}
    return sorted(records, key=lambda r: order.get(r["stage"], 9))


def _json_files(location: str) -> list[dict[str, Any]]:
    """Every JSON file directly under ``location`` (local or remote), in name order; none if absent."""
    fs, root = data.filesystem(location)
    if not fs.exists(root):
        return []
    found = []
    for path in sorted(fs.ls(root, detail=False)):
        with fs.open(path) as fh:
            found.append(json.load(fh))
    return found


def claim_output(cfg: Config, resume: bool) -> str:
    """Decide what this run does with its output: ``new``, ``resume`` or ``finished``.

    A restart with the same output and the same config resumes from the run's last checkpoint;
    a different config is refused (it would mix two runs' checkpoints).
    """
    fs, root = data.filesystem(cfg.output)
    path = f"{root}/{RUN_CONFIG}"
    try:
        exists = fs.exists(path)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot reach the output {cfg.output}: {detail}") from None
    if not exists:
        if resume:
            raise ConfigError(f"--resume: {cfg.output} holds no run to resume")
        fs.makedirs(root, exist_ok=True)
        with fs.open(path, "w") as fh:
            json.dump(cfg.to_dict(), fh, indent=2)
        return "new"
    with fs.open(path) as fh:
        before = dict(flatten(json.load(fh)))
    now = dict(flatten(cfg.to_dict()))
    keys = (before.keys() | now.keys()) - set(RESTART_MAY_CHANGE)
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} → {now.get(k)!r})" for k in changed[:3])
        raise ConfigError(
            f"{cfg.output} holds a different run (changed: {shown}{', …' if len(changed) > 3 else ''}); "
            "choose another --output, or restart with the same settings to resume"
        )
    return "finished" if fs.exists(f"{root}/run.json") else "resume"


def _root_cause(exc: BaseException) -> str:
    """The last line of the innermost error message (Ray nests worker tracebacks in its message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith(" ")]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors or lines or [type(exc).__name__])[-1][:300]


def storage_of(output: str) -> str:
    """Ray Train's storage path inside the run directory (absolute for local paths)."""
    if "://" in output:
        return output.rstrip("/") + "/ray"
    return os.path.join(os.path.abspath(output), "ray")


def publish(checkpoint: Any, output: str) -> str:
    """Copy the final model from Ray's checkpoint to ``<output>/model``; returns a local copy.

    Locally the directory appears at once (written beside it, then renamed): a reader never sees
    a half-written model. On object stores, where renames are copies, ``run.json`` is written after
    the model and marks it complete.
    """
    local = tempfile.mkdtemp(prefix="sparse-ray-final-")
    checkpoint.to_directory(local)
    fs, root = data.filesystem(output)
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


def write_json(output: str, name: str, payload: dict[str, Any]) -> None:
    fs, root = data.filesystem(output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{name}", "w") as fh:
        json.dump(payload, fh, indent=2, default=str)


def compare(cfg: Config, base_model: str, model_dir: str, holdout: list[dict[str, Any]]) -> dict[str, Any]:
    """Hold-out retrieval and sparsity of the trained model next to the same model untrained."""
    import transformers
    from sentence_transformers import SparseEncoder

    from sparse_ray.evaluate import evaluate
    from sparse_ray.model import model_from_config

    transformers.set_seed(cfg.train.seed)
    untrained = model_from_config(cfg.to_dict()["model"], base_model)
    trained = SparseEncoder(model_dir, device="cpu")
    return {"untrained": evaluate(untrained, holdout), "trained": evaluate(trained, holdout)}


def training_log(model_dir: str) -> list[dict[str, Any]]:
    """The trainer's log history, saved by rank 0 next to the model."""
    with open(os.path.join(model_dir, TRAINING_LOG)) as fh:
        return json.load(fh)


def final_state(model_dir: str) -> dict[str, Any]:
    """The run state rank 0 saved with the final model: metrics, attempts, global step."""
    with open(os.path.join(model_dir, STATE_FILE)) as fh:
        return json.load(fh)


def losses(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Loss, its parts and the learning rate at each logging step."""
    keep = ("step", "loss", "learning_rate")
    return [{k: v for k, v in e.items() if k in keep or k.endswith("_loss")} for e in history if "loss" in e]


def eval_history(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Hold-out metrics of every evaluation during training."""
    return [eval_point(e, e.get("step", 0)) for e in history if any(k.startswith("eval_") for k in e)]


def versions() -> dict[str, str]:
    names = ("sparse-ray", "ray", "sentence-transformers", "transformers", "deepspeed", "torch", "datasets")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "not installed"
    return found


def read_run(output: str) -> dict[str, Any]:
    fs, root = data.filesystem(output)
    with fs.open(f"{root}/run.json") as fh:
        return json.load(fh)


def plan_line(cfg: Config, plan: data.Plan) -> str:
    line = (
        f"plan: {plan.max_steps} steps = {cfg.train.epochs} epoch(s) × {plan.steps_per_epoch} steps; "
        f"{plan.rows_per_worker} rows per worker, global batch {cfg.global_batch}"
    )
    if len(cfg.data.languages) > 1:
        steps = ", ".join(f"{lang} {v['steps']}" for lang, v in plan.languages.items())
        line += f"; steps per language ({cfg.data.language_sampling}): {steps}"
    return line


def language_splits(
    cfg: Config, per_language: dict[str, Any], plan: data.Plan
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Per language: the lazy training rows the plan uses, and up to ``eval_queries`` hold-out rows."""
    k, workers = cfg.data.num_negatives, cfg.cluster.workers
    train_ds, holdouts = {}, {}
    for lang, ds in per_language.items():
        rows = plan.languages[lang]["rows_per_worker"] * workers
        if rows:
            train_ds[lang] = data.split_rows(ds, "train", k).limit(rows)
        if cfg.data.eval_queries:
            holdouts[lang] = data.split_rows(ds, "holdout", k).limit(cfg.data.eval_queries).take_all()
    return train_ds, holdouts


def language_report(plan: data.Plan, metrics: dict[str, Any], cfg: Config) -> dict[str, dict[str, int]]:
    """Steps and rows per language: planned, and the rows all workers fed in the last attempt."""
    fed = metrics.get("rows_per_language", {})
    return {
        lang: {
            "steps": v["steps"] * cfg.train.epochs,
            "rows_planned": v["steps"] * cfg.train.epochs * cfg.global_batch,
            "rows_fed_last_attempt": int(fed.get(lang, 0)),
        }
        for lang, v in plan.languages.items()
    }


def train(cfg: Config, dry_run: bool = False, resume: bool = False) -> dict[str, Any]:
    """The whole run (see the module docstring); returns what it writes to ``run.json``.

    With an output that already holds this run (same config), training resumes from the run's last
    checkpoint; ``resume=True`` insists that there is one.
    """
    started = time.perf_counter()
    console.print(config_table(cfg.to_dict()))
    sources = data.resolve_sources(cfg)
    base_model = resolve_base_model(cfg.model.base)
    mode = "dry-run" if dry_run else claim_output(cfg, resume)
    if mode == "finished":
        console.print(f"{cfg.output} already holds this run, finished (run.json); nothing to do")
        return read_run(cfg.output)
    if mode == "resume":
        console.print(f"resuming the run in {cfg.output} from its last checkpoint")
    connect(cfg)
    per_language = data.read_languages(cfg, sources)
    stats = data.count(data.union(per_language))
    console.print(data_table(stats.to_dict()))
    plan = data.plan_steps(cfg, dict(stats.train))
    console.print(plan_line(cfg, plan))
    if dry_run:
        return {"config": cfg.to_dict(), "data": stats.to_dict(), "plan": dataclasses.asdict(plan)}
    train_ds, holdouts = language_splits(cfg, per_language, plan)
    holdout = [row for rows in holdouts.values() for row in rows]
    result = fit(cfg, train_ds, worker_plan(cfg, plan, base_model, holdout), storage_of(cfg.output))
    assert result.checkpoint is not None, "rank 0 reports the final model as a checkpoint"
    model_dir = publish(result.checkpoint, cfg.output)
    history = training_log(model_dir)
    final = final_state(model_dir)
    run = {
        "config": cfg.to_dict(),
        "base_model": base_model,
        "data": stats.to_dict(),
        "plan": dataclasses.asdict(plan),
        "train": final["metrics"],
        "attempts": final["attempts"],
        "failures": failures(cfg.output),
        "losses": losses(history),
        "eval_history": eval_history(history),
        "languages": language_report(plan, final["metrics"], cfg),
        "eval": compare(cfg, base_model, model_dir, holdout) if holdout else {},
        "versions": versions(),
        "output": cfg.output,
    }
    if len(holdouts) > 1:
        run["eval_per_language"] = {
            lang: compare(cfg, base_model, model_dir, rows) for lang, rows in holdouts.items() if rows
        }
    run["wall_seconds"] = time.perf_counter() - started
    write_json(cfg.output, "run.json", run)
    console.print(summary_table(run))
    return run

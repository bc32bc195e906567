"""Driver side of ``sparse-ray train``: resolve data, start or join Ray, fit, publish, evaluate.

Order matters for users: everything that can fail because of their input (config, data location,
base model) fails before Ray starts. The driver never holds the dataset: it streams one count pass,
hands the lazy training plan to Ray Train, and takes only the hold-out rows it evaluates on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from importlib.metadata import version
from typing import Any

from sparse_ray import data
from sparse_ray.config import Config, deepspeed_config, resolve_base_model
from sparse_ray.console import config_table, console, data_table, summary_table
from sparse_ray.errors import ConfigError, UserError
from sparse_ray.localray import use_local_ray_env
from sparse_ray.loop import TRAINING_LOG, eval_point, train_loop


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

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    address = ray_address(cfg)
    if address is None:
        check_local_capacity(cfg)
        use_local_ray_env()  # effective only if ray was not imported yet (the CLI calls it earlier)
        # address="local" always starts a new cluster, never attaches to one found on the host
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, **kwargs)
    else:
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
        "global_batch": cfg.global_batch,
        "use_gpu": cfg.use_gpu,
        "deepspeed": deepspeed_config(cfg.cluster.zero),
        "worker_env": worker_env,
        "holdout": holdout or [],
        # rank 0 writes tracker logs here; a remote (s3://) run keeps them on rank 0's node
        "tensorboard_dir": None if "://" in cfg.output else os.path.join(os.path.abspath(cfg.output), "tensorboard"),
    }


def fit(cfg: Config, train_ds: Any, plan: dict[str, Any], storage: str) -> Any:
    """Run the Ray Train job; returns Ray's Result (metrics of rank 0, the final checkpoint)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.cluster.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=plan,
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.cluster.placement,
        ),
        # a fresh name per run: Ray Train treats a reused (storage_path, name) as a resume
        run_config=RunConfig(name=time.strftime("train-%Y%m%d-%H%M%S"), storage_path=storage),
        datasets={"train": train_ds},
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; the full traceback is in the worker logs above
        raise UserError(f"training failed: {_root_cause(exc)}") from None


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
    """Copy the final model from Ray's checkpoint to the run directory itself; returns a local copy."""
    local = tempfile.mkdtemp(prefix="sparse-ray-final-")
    checkpoint.to_directory(local)
    fs, root = data.filesystem(output)
    fs.makedirs(root, exist_ok=True)
    for dirpath, _, files in os.walk(local):
        rel = os.path.relpath(dirpath, local)
        target = root if rel == "." else f"{root}/{rel}"
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


def train(cfg: Config, dry_run: bool = False) -> dict[str, Any]:
    """The whole run (see the module docstring); returns what it writes to ``run.json``."""
    started = time.perf_counter()
    console.print(config_table(cfg.to_dict()))
    sources = data.resolve_sources(cfg)
    base_model = resolve_base_model(cfg.model.base)
    connect(cfg)
    ds = data.read(cfg, sources)
    stats = data.count(ds)
    console.print(data_table(stats.to_dict()))
    plan = data.plan_steps(cfg, sum(stats.train.values()))
    console.print(
        f"plan: {plan.max_steps} steps = {cfg.train.epochs} epoch(s) × {plan.steps_per_epoch} steps; "
        f"{plan.rows_per_worker} rows per worker, global batch {cfg.global_batch}"
    )
    if dry_run:
        return {"config": cfg.to_dict(), "data": stats.to_dict(), "plan": dataclasses.asdict(plan)}
    k = cfg.data.num_negatives
    train_ds = data.split_rows(ds, "train", k).limit(plan.rows_per_worker * cfg.cluster.workers)
    holdout = data.split_rows(ds, "holdout", k).limit(cfg.data.eval_queries).take_all() if cfg.data.eval_queries else []
    result = fit(cfg, train_ds, worker_plan(cfg, plan, base_model, holdout), storage_of(cfg.output))
    assert result.checkpoint is not None, "rank 0 reports the final model as a checkpoint"
    model_dir = publish(result.checkpoint, cfg.output)
    history = training_log(model_dir)
    run = {
        "config": cfg.to_dict(),
        "base_model": base_model,
        "data": stats.to_dict(),
        "plan": dataclasses.asdict(plan),
        "train": dict(result.metrics),
        "losses": losses(history),
        "eval_history": eval_history(history),
        "eval": compare(cfg, base_model, model_dir, holdout),
        "versions": versions(),
        "output": cfg.output,
    }
    run["wall_seconds"] = time.perf_counter() - started
    write_json(cfg.output, "run.json", run)
    console.print(summary_table(run))
    return run

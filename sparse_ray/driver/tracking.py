"""Experiment trackers on the driver: fail before training when one cannot work, and hand the
workers the tracker settings of the driver's environment.

Rank 0 of the workers does the logging (Hugging Face's ``WandbCallback`` / ``MLflowCallback`` and
``worker.callbacks.TrackRun``). Settings travel as environment variables: every ``WANDB_*`` and
``MLFLOW_*`` variable of the driver is forwarded to the workers, except secrets (names with KEY,
TOKEN, PASSWORD or SECRET), which stay out of the run's plan: give those to the cluster (a job
spec's ``env``, the KubeRay ``sparse-ray-env`` Secret). A local output without tracker settings
keeps its W&B run directory and an MLflow store (``mlflow.db``, SQLite, artifacts in
``mlartifacts/``) inside the output directory; the driver creates that store's experiment, so its
artifacts land there and not in a worker's working directory.
"""

from __future__ import annotations

import importlib.util
import netrc
import os

from sparse_ray.config import Config
from sparse_ray.errors import ConfigError

PREFIXES = ("WANDB_", "MLFLOW_")
SECRET_MARKS = ("KEY", "TOKEN", "PASSWORD", "SECRET")
#: Per tracker: the Python modules that provide it (any one) and what to install.
MODULES = {
    "wandb": (("wandb",), "pip install 'sparse-ray[wandb]'"),
    "mlflow": (("mlflow",), "pip install 'sparse-ray[mlflow]'"),
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboardX (Ray Tune brings it)"),
}
OFFLINE_WANDB = ("offline", "disabled", "dryrun")
#: The MLflow store of a local output without ``MLFLOW_TRACKING_URI`` (relative to the output).
LOCAL_STORE = "mlflow.db"
DEFAULT_EXPERIMENT = "sparse-ray"


def check(cfg: Config) -> None:
    """One line (ConfigError) when a tracker of ``train.report_to`` is not installed or, for an
    online W&B run, has no API key: before the data is read or a worker starts."""
    for tracker in cfg.train.trackers:
        modules, install = MODULES[tracker]
        if all(importlib.util.find_spec(m) is None for m in modules):
            raise ConfigError(f"train.report_to={tracker} needs the {modules[0]} package: {install}")
    if "wandb" in cfg.train.trackers and os.environ.get("WANDB_MODE", "online") not in OFFLINE_WANDB:
        if not os.environ.get("WANDB_API_KEY") and not _netrc_has("api.wandb.ai"):
            raise ConfigError(
                "train.report_to=wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`; "
                "WANDB_MODE=offline logs locally)"
            )


def worker_env(cfg: Config) -> dict[str, str]:
    """Tracker settings for the workers: the driver's non-secret ``WANDB_*``/``MLFLOW_*`` variables,
    and for a local output its W&B directory and a default MLflow store inside it."""
    if not cfg.train.trackers:
        return {}
    env = {k: v for k, v in os.environ.items() if k.startswith(PREFIXES) and not _secret(k)}
    if "://" not in cfg.output:
        out = os.path.abspath(cfg.output)
        if "wandb" in cfg.train.trackers:
            env.setdefault("WANDB_DIR", out)
        if store := _local_store(cfg):
            env["MLFLOW_TRACKING_URI"] = store
            env.setdefault("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    return env


def _local_store(cfg: Config) -> str | None:
    """The output's own MLflow store, when MLflow logs a local output without MLFLOW_TRACKING_URI."""
    if "mlflow" not in cfg.train.trackers or "://" in cfg.output or os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return f"sqlite:///{os.path.join(os.path.abspath(cfg.output), LOCAL_STORE)}"


def prepare(cfg: Config) -> None:
    """Create the local MLflow store's experiment (artifacts inside the output) before the workers log."""
    store = _local_store(cfg)
    if store is None:
        return
    from mlflow.tracking import MlflowClient

    os.makedirs(os.path.abspath(cfg.output), exist_ok=True)
    client, name = MlflowClient(store), os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=os.path.join(os.path.abspath(cfg.output), "mlartifacts"))


def _secret(name: str) -> bool:
    return any(mark in name.upper() for mark in SECRET_MARKS)


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False

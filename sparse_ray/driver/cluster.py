"""The Ray cluster a run uses: join ``cluster.address`` (or ``$RAY_ADDRESS``) or start a local one,
after the capacity checks that would otherwise end in a hang."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from sparse_ray.config import Config
from sparse_ray.driver.localray import init_in_process, use_local_ray_env
from sparse_ray.driver.quiet import quiet_ray
from sparse_ray.errors import ConfigError, UserError


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
    quiet_ray()

"""The Ray cluster a run uses: join ``cluster.address`` (or ``$RAY_ADDRESS``) or start a local one,
after the capacity checks that would otherwise end in a hang; a joined cluster that cannot place
the workers yet is asked to scale up (``capacity.py``)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from sparse_ray.config import Config
from sparse_ray.driver import capacity
from sparse_ray.driver.localray import init_in_process, use_local_ray_env
from sparse_ray.driver.quiet import quiet_ray
from sparse_ray.errors import ConfigError, UserError


def ray_address(cfg: Config) -> str | None:
    """The cluster to join: ``cluster.address``, else ``RAY_ADDRESS`` (set inside a Ray job), else None."""
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None


def check_local_capacity(cfg: Config) -> None:
    """A local cluster needs a CPU beyond the workers' and the teacher actors' (one pool per
    language) or Ray Data never gets to read (a hang)."""
    c, t = cfg.cluster, cfg.train
    teachers = len(cfg.data.languages) * t.teacher_replicas * t.teacher_cpus if t.teacher_model else 0.0
    if c.num_cpus < c.workers * c.cpus_per_worker + teachers + 1:
        beside = f" and {teachers:g} for teacher actors" if teachers else ""
        raise ConfigError(
            f"cluster.num_cpus={c.num_cpus} leaves no CPU for Ray Data next to {c.workers} workers{beside}; raise it"
            + (" or lower train.teacher_cpus" if teachers else "")
        )
    if c.gpus_per_worker:
        import torch

        if torch.cuda.device_count() < c.workers * c.gpus_per_worker:
            raise ConfigError(
                f"{c.workers} workers × {c.gpus_per_worker} GPU need {c.workers * c.gpus_per_worker} GPUs; "
                f"this machine has {torch.cuda.device_count()} (use --gpus-per-worker 0 or --address)"
            )


def connect(cfg: Config, dry_run: bool = False) -> bool:
    """Join the run's cluster or start a local one (kept for the life of this process), then make
    sure it can place the workers. True when its autoscaler was asked for them: call
    ``capacity.release()`` when the run ends. A dry run asks for nothing; it says what is missing."""
    import ray

    from sparse_ray.console import console

    if not ray.is_initialized():
        _init(cfg, dry_run)
    if not dry_run:
        return capacity.ensure_workers(cfg, console.print)
    bundle, spread = capacity.worker_bundle(cfg), cfg.cluster.placement == "STRICT_SPREAD"
    nodes = capacity.alive_nodes()
    if not capacity.placeable(bundle, cfg.cluster.workers, nodes, spread):
        console.print(
            f"warning: the cluster cannot place {capacity.describe(bundle, cfg.cluster.workers)} now "
            f"({capacity.totals(nodes)}); a real run asks its autoscaler, if it has one",
            soft_wrap=True,
        )
    return False


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


def _init(cfg: Config, dry_run: bool) -> None:
    import ray

    from sparse_ray.console import console

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    address = ray_address(cfg)
    if address is None:
        try:
            check_local_capacity(cfg)
        except ConfigError as exc:
            if not dry_run:
                raise
            # a dry run plans a cluster's run on a laptop: it reads the data on a local cluster
            console.print(f"warning: {exc}; planning only", soft_wrap=True)
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

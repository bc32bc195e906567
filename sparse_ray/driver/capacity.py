"""Capacity on the driver: can the joined cluster place the run's workers, and if not yet, ask its
autoscaler for them and wait (or fail in one line when it never will).

The workers are ``cluster.workers`` bundles of ``{"CPU": cpus_per_worker, "GPU": gpus_per_worker}``
placed with ``cluster.placement``, exactly what Ray Train's placement group asks for. When the alive
nodes cannot hold them, the driver calls Ray's ``request_resources`` (a persistent hint that makes
the autoscaler launch nodes at once) and waits up to ``cluster.wait_for_workers``, printing what is
pending. The hint is withdrawn when the run ends (:func:`release`), so idle nodes can scale down.

"Never": the autoscaler (v1, the default on the cluster launcher and KubeRay) launches every node a
request needs in its next update. When it has updated :data:`IDLE_UPDATES` times with nothing
pending and the workers still cannot be placed, no node type (within its ``max_workers``) provides them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from sparse_ray.config import Config
from sparse_ray.errors import ConfigError, UserError

#: Autoscaler updates with nothing pending after which an unplaceable request is infeasible.
IDLE_UPDATES = 3
#: Seconds to wait for a first autoscaler report before deciding the cluster has no autoscaler.
STATUS_WAIT_S = 15.0
#: The key under which Ray's v1 autoscaler publishes its status (``ray status`` reads it).
STATUS_KEY = "__autoscaling_status"


def worker_bundle(cfg: Config) -> dict[str, float]:
    """The resources of one worker, as Ray Train reserves them."""
    bundle = {"CPU": float(cfg.cluster.cpus_per_worker)}
    if cfg.cluster.gpus_per_worker:
        bundle["GPU"] = float(cfg.cluster.gpus_per_worker)
    return bundle


def placeable(bundle: dict[str, float], count: int, nodes: list[dict[str, float]], strict_spread: bool) -> bool:
    """Whether ``count`` copies of ``bundle`` fit the nodes' total resources (first fit; with
    ``strict_spread`` at most one per node, as Ray's STRICT_SPREAD requires)."""
    free = [dict(n) for n in nodes]
    for _ in range(count):
        node = next((n for n in free if all(n.get(k, 0.0) >= v for k, v in bundle.items())), None)
        if node is None:
            return False
        if strict_spread:
            free.remove(node)
        else:
            for k, v in bundle.items():
                node[k] -= v
    return True


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def autoscaler_status() -> dict | None:
    """The autoscaler's last published status (None when the cluster has no autoscaler)."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(STATUS_KEY)
    return json.loads(raw) if raw else None


@dataclass
class Waiter:
    """Watches the autoscaler's reports while the requested workers are not placeable."""

    need: str
    idle_updates: int = 0
    last_time: float | None = None
    last_line: str = ""

    def observe(self, status: dict, say: Callable[[str], None]) -> None:
        if status.get("time") == self.last_time:
            return
        self.last_time = status.get("time")
        report = status.get("autoscaler_report") or {}
        launches, nodes = report.get("pending_launches") or {}, report.get("pending_nodes") or []
        self.idle_updates = 0 if launches or nodes else self.idle_updates + 1
        line = pending_line(launches, nodes)
        if line and line != self.last_line:
            say(f"waiting for {self.need}: {line}")
        self.last_line = line


def pending_line(launches: dict[str, int], nodes: list) -> str:
    parts = [f"{n} × {t} launching" for t, n in sorted(launches.items())]
    by_type: dict[str, int] = {}
    for node in nodes:
        by_type[node[1]] = by_type.get(node[1], 0) + 1
    parts += [f"{n} × {t} starting" for t, n in sorted(by_type.items())]
    return ", ".join(parts)


def describe(bundle: dict[str, float], count: int) -> str:
    res = " + ".join(f"{v:g} {k}" for k, v in bundle.items())
    return f"{count} workers × ({res})"


def totals(nodes: list[dict[str, float]]) -> str:
    cpu = sum(n.get("CPU", 0.0) for n in nodes)
    gpu = sum(n.get("GPU", 0.0) for n in nodes)
    most = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    return f"{len(nodes)} nodes, {cpu:g} CPUs, {gpu:g} GPUs (at most {most:g} per node)"


def ensure_workers(cfg: Config, say: Callable[[str], None]) -> bool:
    """Return once the workers are placeable; True when the autoscaler was asked (release it later).

    Raises ConfigError when no autoscaler exists or it never provides them, UserError on timeout.
    """
    bundle, count = worker_bundle(cfg), cfg.cluster.workers
    spread = cfg.cluster.placement == "STRICT_SPREAD"
    need = describe(bundle, count) + (" on separate nodes" if spread else "")
    if placeable(bundle, count, alive_nodes(), spread):
        return False
    status = _first_status()
    if status is None:
        raise ConfigError(
            f"the Ray cluster cannot place {need}: it has {totals(alive_nodes())} and no autoscaler "
            "(start its nodes first, or ask for fewer GPUs with --gpus-per-worker)"
        )
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[bundle] * count)
    say(f"asked the cluster's autoscaler for {need}; waiting up to {cfg.cluster.wait_for_workers:.0f}s")
    try:
        _wait(cfg, bundle, count, spread, Waiter(need), say)
    except UserError:
        release()
        raise
    return True


def _first_status() -> dict | None:
    deadline = time.monotonic() + STATUS_WAIT_S
    while (status := autoscaler_status()) is None and time.monotonic() < deadline:
        time.sleep(1.0)
    return status


def _wait(
    cfg: Config, bundle: dict[str, float], count: int, spread: bool, waiter: Waiter, say: Callable[[str], None]
) -> None:
    started = time.monotonic()
    while not placeable(bundle, count, nodes := alive_nodes(), spread):
        waiter.observe(autoscaler_status() or {}, say)
        if waiter.idle_updates >= IDLE_UPDATES:
            raise ConfigError(
                f"the cluster's autoscaler launches no node for {waiter.need}: no node type offers that "
                f"(or its max_workers is reached); the cluster has {totals(nodes)}"
            )
        if time.monotonic() - started > cfg.cluster.wait_for_workers:
            raise UserError(
                f"{waiter.need} not placeable after cluster.wait_for_workers={cfg.cluster.wait_for_workers:.0f}s; "
                f"the cluster has {totals(nodes)}; pending: {waiter.last_line or 'nothing'}"
            )
        time.sleep(1.0)
    say(f"the cluster scaled up for {waiter.need} in {time.monotonic() - started:.0f}s: {totals(nodes)}")


def release() -> None:
    """Withdraw this driver's request (the autoscaler may then remove idle nodes)."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if ray.is_initialized():
        request_resources(bundles=[])

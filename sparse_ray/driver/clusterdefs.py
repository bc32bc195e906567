"""Cluster definitions on disk (``cluster/``): what nodes a cluster file can ever offer, so a job
spec can be checked against it before anything is submitted (``sparse-ray submit --cluster-file``).

Two formats are read:

- the Ray cluster launcher (``aws.yaml``): ``available_node_types`` with explicit ``resources``
  (``CPU``/``GPU`` per node) and ``max_workers``;
- KubeRay ``RayCluster`` and ``RayJob`` manifests: the head group and each worker group, a node's
  CPUs and GPUs from ``rayStartParams`` (``num-cpus``/``num-gpus``) or else the container's limits
  (``cpu``, ``nvidia.com/gpu``), as Ray does inside a pod; the most nodes per group are
  ``maxReplicas`` when in-tree autoscaling is on, else ``replicas``.

A spec fits when its workers (``cluster.workers`` bundles of CPU + GPU, with its placement
strategy) can be placed on every node type at its maximum count: the same first-fit rule the
driver uses on a live cluster (``capacity.placeable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sparse_ray.config import Config, read_yaml_mapping
from sparse_ray.driver import capacity
from sparse_ray.errors import ConfigError

GPU_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeType:
    """One kind of node a cluster can run: resources per node and how many it may have."""

    name: str
    resources: dict[str, float]
    max_nodes: int
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterDef:
    """A cluster file reduced to what placement needs."""

    path: str
    kind: str
    """``launcher``, ``RayCluster`` or ``RayJob``."""
    node_types: list[NodeType]
    ray_version: str | None = None
    entrypoint: str | None = None
    """The job a ``RayJob`` runs (None for the others)."""
    autoscaling: bool = False
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> set[str]:
        return {image for t in self.node_types for image in t.images}

    def nodes(self) -> list[dict[str, float]]:
        """Every node the cluster can have at once (each type at its maximum)."""
        return [dict(t.resources) for t in self.node_types for _ in range(t.max_nodes)]

    def misfit(self, cfg: Config) -> str | None:
        """None when ``cfg``'s workers can be placed here, else why not (one line)."""
        bundle, count = capacity.worker_bundle(cfg), cfg.cluster.workers
        spread = cfg.cluster.placement == "STRICT_SPREAD"
        if capacity.placeable(bundle, count, self.nodes(), spread):
            return None
        return (
            f"{Path(self.path).name} can never place {capacity.describe(bundle, count)}"
            f"{' on separate nodes' if spread else ''}: at most {capacity.totals(self.nodes())}"
        )


def load(path: str | Path) -> ClusterDef:
    """Read a launcher YAML or a KubeRay manifest; ConfigError for anything else."""
    raw = read_yaml_mapping(Path(path), "cluster file")
    if "available_node_types" in raw:
        return _launcher(str(path), raw)
    if raw.get("kind") == "RayCluster":
        return _kuberay(str(path), "RayCluster", raw["spec"])
    if raw.get("kind") == "RayJob":
        cluster = _kuberay(str(path), "RayJob", raw["spec"]["rayClusterSpec"])
        return replace(cluster, entrypoint=" ".join(str(raw["spec"]["entrypoint"]).split()))
    raise ConfigError(f"{path}: neither a Ray cluster launcher file nor a KubeRay RayCluster/RayJob")


def _launcher(path: str, raw: dict[str, Any]) -> ClusterDef:
    types = []
    for name, node in raw["available_node_types"].items():
        res = node.get("resources") or {}
        if name != raw.get("head_node_type") and "CPU" not in res:
            raise ConfigError(f"{path}: node type {name} declares no CPU count (resources: {{CPU: ..., GPU: ...}})")
        count = 1 if name == raw.get("head_node_type") else int(node.get("max_workers", 0))
        image = (raw.get("docker") or {}).get("image")
        types.append(NodeType(name, {k: float(v) for k, v in res.items()}, count, (image,) if image else ()))
    return ClusterDef(path, "launcher", types, autoscaling=True)


def _kuberay(path: str, kind: str, spec: dict[str, Any]) -> ClusterDef:
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    types = [_group(path, "head", spec["headGroupSpec"], 1)]
    for group in spec.get("workerGroupSpecs", []):
        count = group.get("maxReplicas" if autoscaling else "replicas", group.get("replicas", 0))
        types.append(_group(path, group["groupName"], group, int(count)))
    env = {e["name"]: e.get("value") for c in _containers(spec["headGroupSpec"]) for e in c.get("env", [])}
    return ClusterDef(path, kind, types, spec.get("rayVersion"), autoscaling=autoscaling, env=env)


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _group(path: str, name: str, group: dict[str, Any], count: int) -> NodeType:
    """The Ray node one pod of ``group`` becomes (its first container runs Ray)."""
    ray_container = _containers(group)[0]
    limits = ray_container.get("resources", {}).get("limits", {})
    params = group.get("rayStartParams") or {}
    cpu = params.get("num-cpus", limits.get("cpu"))
    if cpu is None:
        raise ConfigError(f"{path}: group {name} sets neither num-cpus nor a CPU limit")
    res = {"CPU": _quantity(cpu)}
    gpu = params.get("num-gpus", limits.get(GPU_KEY))
    if gpu is not None and _quantity(gpu):
        res["GPU"] = _quantity(gpu)
    return NodeType(name, res, count, tuple(c["image"] for c in _containers(group)))


def _quantity(value: Any) -> float:
    """A Kubernetes CPU quantity ("4", "500m") or a plain number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)

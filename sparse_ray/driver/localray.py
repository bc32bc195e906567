"""Local Ray clusters on one machine, bound to loopback: the in-process default and a real
multi-node recipe (a head plus extra nodes, each with its own raylet and object store).

    python -m sparse_ray.driver.localray start [--nodes 2] [--cpus 4]   # prints the addresses, writes pids
    python -m sparse_ray.driver.localray start --autoscale NODE_TYPES.yaml  # a head + Ray's fake autoscaler
    python -m sparse_ray.driver.localray stop                           # stops exactly those pids

Ray reads some settings when ``ray`` is first imported, so :func:`use_local_ray_env` must run
before anything imports ray (the CLI does it right after validating the config).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Loopback only (undocumented: binds GCS, raylet, workers, Jobs and Train to 127.0.0.1), no usage
#: reporting, and an explicit auth mode so a stray ~/.ray/auth_token cannot change behaviour.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
#: For several nodes on one host the loopback switch above must be off (it forbids multi-node
#: clusters); every node is started with --node-ip-address=127.0.0.1 instead, so traffic between
#: them still stays on loopback. Ray 2.60's ``ray start --block`` answers SIGTERM by draining its
#: node (a preemption drain) for up to 30 s; after any Ray Data run a detached actor
#: (``_AutoscalingCoordinatorActor``) keeps the node busy, so every stop waited the full 30 s. These
#: local clusters are stopped on purpose: no drain (``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0``).
NO_DRAIN_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
MULTI_NODE_ENV = {**LOCAL_RAY_ENV, **NO_DRAIN_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
PID_FILE = Path(os.environ.get("SPARSE_RAY_LOCAL_PIDS", "/tmp/sparse-ray-local-cluster.json"))


def use_local_ray_env() -> None:
    """Apply LOCAL_RAY_ENV where the user has not set the variable already."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def init_in_process(num_cpus: int, **kwargs: object) -> None:
    """Start a new single-node cluster for this process (``ray.init(address="local")``).

    Its processes are told where its dashboard is (``RAY_API_SERVER_ADDRESS`` in the environment
    the raylet inherits; the driver's own environment is restored, so a Jobs client here still
    talks to the address it is given). Ray Train's PlacementGroupCleaner asks the state API whether
    the controller is alive; without the address it looks for "the" cluster in
    /tmp/ray/ray_current_cluster, which the last ``ray start`` on the host wrote and which outlives
    it. Pointing at a dead cluster, every run ended with a GCS-timeout traceback and ~12 s of waiting.
    """
    import ray

    port = free_port()
    key, before = "RAY_API_SERVER_ADDRESS", os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ[key] = f"http://127.0.0.1:{port}"
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            **kwargs,
        )
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    """A head and extra nodes started with ``ray start --block``; each dies with its own pid."""

    gcs_address: str
    dashboard_url: str
    pids: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 60) -> None:
        """Stop our own processes by pid (never ``ray stop``: it kills every Ray on the host).

        A pid is signalled only while it is still a ``ray start --block`` process: a node that died
        already may have handed its pid to an unrelated process. Processes those nodes started
        (the nodes a fake autoscaler launched are children of its monitor, not of a ``ray start``)
        are taken as they are now and killed after their parents are gone, if still the same processes.
        """
        mine = [pid for pid in self.pids if _is_ray_start(pid)]
        spawned = _descendants(mine)
        for pid in reversed(mine):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in mine:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _is_ray_start(pid):
                _signal(pid, signal.SIGKILL)
        _kill_remaining(spawned)


def _descendants(pids: list[int]) -> list:
    import psutil

    found = []
    for pid in pids:
        try:
            found += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
    return found


def _kill_remaining(procs: list) -> None:
    """SIGKILL the processes of ``procs`` still running; psutil checks each is the process it was
    (pid and start time), so a reused pid is never signalled."""
    import psutil

    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.Error:
            pass


def _is_ray_start(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and {"start", "--block"} <= set(proc.cmdline())
    except psutil.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:  # not our child (stopped from another process): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> int:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    with open(log, "ab") as out:
        proc = subprocess.Popen([ray, "start", "--block", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc.pid


def _head_args(port: int, dash: int, cpus: int) -> list[str]:
    """``ray start`` arguments of a head on loopback with its job server."""
    return [
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--num-cpus={cpus}",
        # the agent's default port (52365) is taken by any other Ray on this host, and without
        # its agent a head accepts no jobs ("No available agent to submit job")
        f"--dashboard-agent-listen-port={free_port()}",
    ]


def start(
    nodes: int = 2, cpus: int = 4, resources: list[dict[str, float]] | None = None, gpus: int = 0
) -> LocalCluster:
    """Start a head (job server on 127.0.0.1) and ``nodes - 1`` extra nodes; wait until all joined.

    ``resources`` gives each node's custom resources (index 0 is the head); ``gpus``: GPUs every
    node declares (declared, not real: for elastic and placement tests). The processes run with
    this interpreter's directory first on PATH, so a job's ``python`` is the project's.
    """
    env = _node_env()
    port, dash = free_port(), free_port()
    log = Path(f"/tmp/sparse-ray-local-{port}.log")
    res = resources or [{} for _ in range(nodes)]
    head = [*_head_args(port, dash, cpus), f"--resources={json.dumps(res[0])}", f"--num-gpus={gpus}"]
    cluster = LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", [_ray_start(head, env, log)])
    _wait_for_jobs(cluster.dashboard_url, cluster)
    for i in range(1, nodes):
        add_node(cluster, cpus, gpus, res[i], wait=False)
    _wait_for_nodes(cluster, nodes)
    return cluster


def _node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    return {**os.environ, **MULTI_NODE_ENV, "PATH": path, **(extra or {})}


def add_node(
    cluster: LocalCluster,
    cpus: int,
    gpus: int = 0,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> int:
    """Join one more node to ``cluster`` (its pid is appended to ``cluster.pids`` and returned);
    ``env`` overrides the node's environment (e.g. a real SIGTERM drain timeout)."""
    node = [
        f"--address={cluster.gcs_address}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        f"--resources={json.dumps(resources or {})}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    port = cluster.gcs_address.rsplit(":", 1)[1]
    pid = _ray_start(node, _node_env(env), Path(f"/tmp/sparse-ray-local-{port}.log"))
    cluster.pids.append(pid)
    if wait:
        _wait_for_nodes(cluster, len([p for p in cluster.pids if _is_ray_start(p)]))
    return pid


def autoscaling(node_types: dict[str, dict], head_cpus: int = 4, update_s: int = 1) -> LocalCluster:
    """A head whose autoscaler is Ray's fake multi-node provider (what Ray's own autoscaler tests
    use): ``node_types`` in the cluster launcher's ``available_node_types`` form (``resources``,
    ``min_workers``, ``max_workers``; resources may declare GPUs this machine lacks). Nodes are
    launched and removed by the autoscaler, as on a cloud, each a real raylet on loopback.
    """
    port, dash = free_port(), free_port()
    config = _fake_autoscaler_config(node_types, head_cpus, f"127.0.0.1:{port}")
    path = Path(f"/tmp/sparse-ray-autoscaler-{port}.json")
    path.write_text(json.dumps(config))
    # the loopback switch stays on: the provider starts its nodes in-process (no `ray start`), and
    # with it on they bind 127.0.0.1 like the head
    env = {
        **os.environ,
        **LOCAL_RAY_ENV,
        **NO_DRAIN_ENV,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": str(update_s),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    head = [*_head_args(port, dash, head_cpus), f"--autoscaling-config={path}"]
    log = Path(f"/tmp/sparse-ray-local-{port}.log")
    cluster = LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", [_ray_start(head, env, log)])
    _wait_for_jobs(cluster.dashboard_url, cluster)
    _wait_for_nodes(cluster, 1)
    return cluster


def _fake_autoscaler_config(node_types: dict[str, dict], head_cpus: int, gcs_address: str) -> dict:
    types = {name: {"node_config": {}, "min_workers": 0, **spec} for name, spec in node_types.items()}
    types["ray.head.default"] = {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    commands = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    return {
        "cluster_name": "sparse-ray-fake",
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.5,
        "docker": {},
        **{c: [] for c in commands},
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _wait_for_jobs(url: str, cluster: LocalCluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"the Ray head's job server did not answer at {url} within {timeout:.0f}s")


def _wait_for_nodes(cluster: LocalCluster, nodes: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{cluster.dashboard_url}/nodes?view=summary", timeout=5) as resp:
                summary = json.load(resp)["data"]["summary"]
            if sum(1 for n in summary if n.get("raylet", {}).get("state") == "ALIVE") >= nodes:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    cluster.stop()
    raise RuntimeError(f"only part of the {nodes} nodes joined within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_ray.driver.localray", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("start")
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument("--cpus", type=int, default=4)
    s.add_argument("--autoscale", metavar="NODE_TYPES.yaml", help="fake autoscaler with these node types")
    sub.add_parser("stop")
    args = p.parse_args(argv)
    if args.verb == "start":
        if args.autoscale:
            import yaml

            cluster = autoscaling(yaml.safe_load(Path(args.autoscale).read_text()), args.cpus)
        else:
            cluster = start(args.nodes, args.cpus)
        PID_FILE.write_text(json.dumps(cluster.__dict__))
        print(f"Ray GCS {cluster.gcs_address}; jobs and dashboard {cluster.dashboard_url}; pids in {PID_FILE}")
        print(f"  sparse-ray train ... --address {cluster.gcs_address}")
        print(f"  sparse-ray submit jobs/python.yaml --address {cluster.dashboard_url} --follow")
        return 0
    if not PID_FILE.exists():
        print(f"no local cluster recorded in {PID_FILE}", file=sys.stderr)
        return 1
    LocalCluster(**json.loads(PID_FILE.read_text())).stop()
    PID_FILE.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

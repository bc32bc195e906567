"""GPU runs on an autoscaling cluster: Ray's own fake multi-node autoscaler (the provider Ray's
autoscaler tests use) launches real raylets on loopback for node types that declare GPUs.

The GPUs are declared, not real: the test-only ``SPARSE_RAY_TEST_DECLARED_GPUS=1`` reserves them as
Ray resources (what makes the autoscaler scale GPU node types) and trains on CPU with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sparse_ray.driver.capacity import placeable
from sparse_ray.driver.fit import DECLARED_GPUS_ENV

pytestmark = pytest.mark.slow

GPU_NODE = {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 300_000_000}, "max_workers": 2}


@pytest.fixture(scope="module")
def autoscaling_cluster():
    from sparse_ray.driver.localray import autoscaling

    cluster = autoscaling({"gpu.1": GPU_NODE}, head_cpus=3)
    yield cluster
    cluster.stop()
    port = cluster.gcs_address.rsplit(":", 1)[1]
    assert not _processes_of(port), "a process of the autoscaling cluster outlived its stop()"


def _processes_of(port: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if f":{port}" in cmd and ("raylet" in cmd or "gcs_server" in cmd):
            found.append(proc.pid)
    return found


def nodes(dashboard: str) -> list[dict]:
    """Every node the cluster has had (alive or dead), from its state API."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=100&detail=1", timeout=10) as resp:
        return json.load(resp)["data"]["result"]["result"]


def alive_nodes(dashboard: str) -> list[dict]:
    return [n for n in nodes(dashboard) if n.get("state") == "ALIVE"]


def train_cmd(base: str, output: Path, address: str, gpus: int) -> list[str]:
    sets = [
        "data.path=sample",
        f"model.base={base}",
        f"output={output}",
        "data.max_samples=32",
        "data.eval_queries=4",
        "train.batch_size=8",
        "train.logging_steps=1",
        "model.max_seq_length=32",
        "cluster.placement=STRICT_SPREAD",
        "cluster.wait_for_workers=240",
    ]
    cmd = [sys.executable, "-m", "sparse_ray.cli", "train", "--address", address, "--workers", "2"]
    cmd += ["--gpus-per-worker", str(gpus), "--zero", "2"]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def test_a_gpu_run_scales_two_nodes_up_from_zero_and_trains_on_them(autoscaling_cluster, tiny_base, tmp_path):
    head_only = alive_nodes(autoscaling_cluster.dashboard_url)
    assert len(head_only) == 1, "min_workers 0: the cluster starts with its head only"
    out = tmp_path / "run"
    env = {**os.environ, DECLARED_GPUS_ENV: "1"}
    cmd = train_cmd(tiny_base, out, autoscaling_cluster.gcs_address, gpus=1)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    text = " ".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert proc.returncode == 0, text[-3000:]
    assert "asked the cluster's autoscaler for 2 workers × (1 CPU + 1 GPU) on separate nodes" in text
    assert "the cluster scaled up for" in text
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["global_step"] == 2
    head = head_only[0]["node_id"]
    ranks = run["train"]["node_per_rank"]
    assert len(set(ranks)) == 2 and head not in ranks, "STRICT_SPREAD on the two new GPU nodes"
    launched = {n["node_id"]: n for n in nodes(autoscaling_cluster.dashboard_url) if n["node_id"] != head}
    assert set(ranks) <= set(launched), "the ranks ran on the nodes the autoscaler launched"
    assert all(launched[r]["resources_total"]["GPU"] == 1 for r in ranks)
    # the run withdrew its request when it ended: the idle nodes go (idle_timeout_minutes 0.5)
    deadline = time.monotonic() + 90
    while len(alive_nodes(autoscaling_cluster.dashboard_url)) > 1 and time.monotonic() < deadline:
        time.sleep(2)
    assert [n["node_id"] for n in alive_nodes(autoscaling_cluster.dashboard_url)] == [head]


def test_more_gpus_per_worker_than_any_node_type_fails_fast_in_one_line(autoscaling_cluster, tiny_base, tmp_path):
    started = time.monotonic()
    cmd = train_cmd(tiny_base, tmp_path / "run", autoscaling_cluster.gcs_address, gpus=2)
    proc = subprocess.run(cmd, env={**os.environ, DECLARED_GPUS_ENV: "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "launches no node for 2 workers × (1 CPU + 2 GPU)" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 120, "infeasible is decided in a few autoscaler updates, not wait_for_workers"


def test_placeable_packs_and_spreads():
    gpu4 = {"CPU": 48.0, "GPU": 4.0}
    assert placeable({"CPU": 1.0, "GPU": 1.0}, 8, [gpu4, gpu4], strict_spread=False)
    assert not placeable({"CPU": 1.0, "GPU": 1.0}, 9, [gpu4, gpu4], strict_spread=False)
    assert not placeable({"CPU": 1.0, "GPU": 1.0}, 3, [gpu4, gpu4], strict_spread=True)
    assert not placeable({"CPU": 1.0, "GPU": 5.0}, 1, [gpu4, gpu4], strict_spread=False)
    assert placeable({"CPU": 1.0}, 2, [{"CPU": 1.0}, {"CPU": 1.0}], strict_spread=True)


def test_dry_run_plans_memory_for_64_gpus_on_the_autoscaling_cluster(autoscaling_cluster, tiny_base, tmp_path):
    """8 nodes × 8 GPUs that do not exist yet: the plan is printed, nothing is asked or trained."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from sparse_ray.driver.memory import model_shape

    cmd = train_cmd(tiny_base, tmp_path / "run", autoscaling_cluster.gcs_address, gpus=1)
    cmd[cmd.index("--workers") + 1] = "64"
    cmd += ["--dry-run", "--set", "cluster.gpu_type=H100", "--set", "train.batch_size=4"]
    cmd += ["--set", "cluster.placement=PACK", "--set", "cluster.gpu_memory_gb=0.002", "--set", "data.max_samples=400"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert "memory plan per GPU (64 GPUs, ZeRO-2, 4 rows × 3 texts per device):" in out
    _, states = estimate_zero2_model_states_mem_needs(model_shape(tiny_base, "splade").params, 8, 8, cpu_offload=False)
    assert f"model + optimizer states  {states / 1e9:.2f} GB" in out
    assert "budget                    0.002 GB (H100), 90% planned; largest batch per device" in out
    assert "warning: the plan needs" in out and "(train.batch_size=4)" in out
    assert len(alive_nodes(autoscaling_cluster.dashboard_url)) == 1, "a dry run launches nothing"

"""Checkpoints, resume and failures, with real processes on a real local Ray cluster.

Every run here trains the same 12 steps (2 workers × batch 8, checkpoint every 4 steps); the
uninterrupted run is the reference: a run that was broken and resumed must log the very same
losses after the resume point (same step, learning-rate schedule, data position, RNG).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs
from faults import CuttableLink, descendants, kill_tree, registered, stop_tree, wait_for

from sparse_ray.config import load_config
from sparse_ray.driver.launch import train
from sparse_ray.driver.localray import MULTI_NODE_ENV
from sparse_ray.errors import UserError

pytestmark = pytest.mark.slow

STEPS = 12


def settings(base: str, output: str, *extra: str) -> list[str]:
    return [
        "data.path=sample",
        f"model.base={base}",
        f"output={output}",
        "cluster.workers=2",
        "cluster.zero=2",
        f"data.max_samples={STEPS * 16}",
        "data.eval_queries=10",
        "train.batch_size=8",
        "train.logging_steps=1",
        "train.eval_steps=1000",
        "train.learning_rate=1e-3",
        "train.save_steps=4",
        "model.max_seq_length=48",
        *extra,
    ]


def cli(sets: list[str]) -> list[str]:
    """The same run through the command line (every setting as --set)."""
    cmd = [sys.executable, "-m", "sparse_ray.cli", "train"]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def losses(run: dict) -> list[float]:
    return [entry["loss"] for entry in run["losses"]]


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_base, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("reference") / "run"
    return train(load_config("quick_test", settings(tiny_base, str(out)))), out


def test_checkpoints_are_complete_and_only_the_last_are_kept(reference, tiny_base):
    from sentence_transformers import SparseEncoder

    run, out = reference
    assert run["train"]["global_step"] == STEPS and len(run["attempts"]) == 1 and run["failures"] == []
    storage = out / "ray" / "train"
    kept = sorted(p.name for p in storage.iterdir() if p.is_dir() and p.name != "groups")
    assert len(list((storage / "groups").glob("*.json"))) == 1  # one start of the worker group
    assert kept == ["final", "step-00000004", "step-00000008"]  # keep_checkpoints=2, plus the final model
    ckpt = storage / "step-00000008"
    state = json.loads((ckpt / "sparse_ray_state.json").read_text())
    assert state["global_step"] == 8 and state["rows_trained_per_rank"] == 8 * 8 and not state["final"]
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 8
    optim = {p.name for p in (ckpt / "global_step8").iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= optim  # both ranks' shards
    assert {"scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}
    model = SparseEncoder(str(ckpt), device="cpu")  # the checkpoint is a loadable SparseEncoder
    assert all(t.numel() > 0 for t in model.state_dict().values())
    assert (out / "model" / "modules.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".model-")], "staging directories left behind"


def test_a_killed_worker_is_replaced_and_the_run_resumes_exactly(ray_cluster, reference, tiny_base, tmp_path):
    from ray.util.state import list_actors

    out = tmp_path / "run"
    cfg = load_config("quick_test", settings(tiny_base, str(out), "train.max_failures=1"))
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(run=train(cfg)), daemon=True)
    thread.start()
    wait_for(lambda: registered(out, "step-00000004"), 300, "the first checkpoint")
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=ray_cluster.get_runtime_context().gcs_address, filters=alive)
    assert len(workers) == 2
    os.kill(workers[1]["pid"], signal.SIGKILL)
    thread.join(600)
    run = box["run"]
    assert run["train"]["global_step"] == STEPS
    assert len(run["attempts"]) == 2 and run["attempts"][1]["from_step"] >= 4
    assert len(run["failures"]) == 1
    assert losses(run) == pytest.approx(losses(reference[0]), rel=1e-6)
    assert json.loads((out / "run.json").read_text())["failures"] == run["failures"]


def killed_after_checkpoint_4(sets: list[str], out: Path) -> None:
    """Run ``sets`` through the CLI and kill it (the driver and the local Ray cluster it started)
    once checkpoint 4 is registered."""
    proc = subprocess.Popen(cli(sets), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: registered(out, "step-00000004"), 300, "the first checkpoint")
    finally:
        stop_tree(proc)


def test_a_killed_run_continues_with_resume(ray_cluster, reference, tiny_base, tmp_path):
    out = tmp_path / "run"
    sets = settings(tiny_base, str(out))
    killed_after_checkpoint_4(sets, out)
    assert not (out / "run.json").exists()
    run = train(load_config("quick_test", sets), resume=True)
    assert run["attempts"][-1]["from_step"] >= 4 and run["train"]["global_step"] == STEPS
    assert losses(run) == pytest.approx(losses(reference[0]), rel=1e-6)


def test_a_resume_on_another_worker_count_keeps_the_objective_and_refuses_zero_shards(reference, tiny_base, tmp_path):
    """A run's recorded config decides: another worker count must keep the global batch and the data
    slots (else it would be another objective), and ZeRO optimizer shards cannot be re-partitioned
    (DeepSpeed refuses a checkpoint of another DP world size). Both refused in one line before Ray
    starts. DDP runs do resume on another size: ``tests/driver/test_elastic.py``."""
    from sparse_ray.errors import ConfigError
    from sparse_ray.rundir import claim_output

    _, out = reference  # 2 workers, ZeRO-2, global batch 16 over 2 slots
    recorded = json.loads((out / "run-config.json").read_text())
    one = [s.replace("cluster.workers=2", "cluster.workers=1") for s in settings(tiny_base, str(out))]
    with pytest.raises(ConfigError, match=r"keep --set train.global_batch=16 --set data.slots=2"):
        train(load_config("quick_test", one))  # batch 8 × 1 worker would be another objective
    same_objective = load_config("quick_test", [*one, "train.global_batch=16", "data.slots=2"])
    with pytest.raises(ConfigError, match=r"trained on 2 workers with ZeRO-2: DeepSpeed cannot re-partition"):
        train(same_objective)
    ddp = {**same_objective.to_dict(), "cluster": {**same_objective.to_dict()["cluster"], "zero": 0}}
    recorded["cluster"]["zero"] = 0  # the same run under DDP may change its worker count
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "run-config.json").write_text(json.dumps(recorded))
    assert claim_output(ddp, str(tmp_path / "ddp"), resume=True) == "resume"


def test_a_stalled_worker_fails_the_run_naming_the_stage(ray_cluster, tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_RAY_FAULT", "stall:rank=1:step=2")
    cfg = load_config("quick_test", settings(tiny_base, str(tmp_path / "run"), "train.stall_timeout=10"))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"rank 1 .*stalled in data: waiting for rows from Ray Data") as err:
        train(cfg)
    assert time.monotonic() - started < 240
    assert "\n" not in str(err.value)
    assert "before the first step" not in str(err.value)  # it stalled after training steps


def test_s3_outage_during_checkpoints_keeps_earlier_checkpoints_and_no_secret_leaks(s3_server, tiny_base, tmp_path):
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("outage")
    link = CuttableLink(int(s3_server.rsplit(":", 1)[1]))
    hf_secret = "hf_dummy_secret_for_leak_test"
    env = {**os.environ, "AWS_ENDPOINT_URL": link.endpoint, "HF_TOKEN": hf_secret}
    sets = settings(tiny_base, "s3://outage/run", "train.max_failures=3", "train.keep_checkpoints=10")
    proc = subprocess.Popen(cli(sets), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        snapshot = "outage/run/ray/train/checkpoint_manager_snapshot.json"
        wait_for(lambda: fs.exists(snapshot) and b"step-00000004" in fs.cat(snapshot), 300, "checkpoint 4")
        fs.invalidate_cache()
        before = {p: i["size"] for p, i in fs.find("outage/run/ray/train/step-00000004", detail=True).items()}
        link.cut()
        time.sleep(8)
        link.restore()
        printed, _ = proc.communicate(timeout=600)
    finally:
        stop_tree(proc)
    fs.invalidate_cache()
    after = {p: i["size"] for p, i in fs.find("outage/run/ray/train/step-00000004", detail=True).items()}
    assert after == before, "the checkpoint written before the outage changed"
    if proc.returncode == 0:
        run = json.loads(fs.cat("outage/run/run.json"))
        assert run["train"]["global_step"] == STEPS
        print("S3 outage: recovered; attempts", run["attempts"], "failures", run["failures"])
    else:  # giving up is allowed, but with one clear line
        assert [ln for ln in printed.splitlines() if ln.startswith("error: training failed")], printed[-2000:]
    for path in fs.find("outage/run"):
        try:
            blob = fs.cat(path)
        except FileNotFoundError:  # a directory marker
            continue
        assert b"testing-secret-key" not in blob and hf_secret.encode() not in blob, path
    assert "testing-secret-key" not in printed and hf_secret not in printed


def test_a_removed_node_fails_the_run_clearly_in_bounded_time(two_nodes, tiny_base, tmp_path):
    out = tmp_path / "run"
    sets = settings(tiny_base, str(out), "cluster.placement=STRICT_SPREAD", "train.max_failures=1")
    sets.append("cluster.wait_for_workers=20")
    cmd = [*cli(sets), "--address", two_nodes.gcs_address]
    # one placement try of 20 s (Ray Train's default is 60) covers the 20 s wait
    env = {**os.environ, **MULTI_NODE_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: registered(out, "step-00000004"), 300, "the first checkpoint")
        # STRICT_SPREAD: each node's process tree holds one training worker. (Found by process title:
        # a Ray state-API client for this second cluster inside the test process made the process
        # exit later, once that cluster was gone.)
        for node in two_nodes.pids:
            titles = [" ".join(p.cmdline()) for p in descendants(node)]
            assert sum("RayTrainWorker" in t for t in titles) == 1, titles
        removed = time.monotonic()
        kill_tree(two_nodes.pids[1])  # the second node: its raylet, object store and its worker
        printed, _ = proc.communicate(timeout=400)
    finally:
        stop_tree(proc)
    waited = time.monotonic() - removed
    errors = [ln for ln in printed.splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and errors and errors[0].startswith("error: training failed"), printed[-3000:]
    assert waited < 150, f"took {waited:.0f}s to give up"

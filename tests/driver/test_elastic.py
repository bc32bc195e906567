"""Elastic training on real two-node local clusters: a lost node, a node added, a preemption drain.

One run (``--workers 1-2``, global batch 8 in 2 data slots, each worker needs one declared GPU so
the group size follows the nodes) goes through every transition while a test thread breaks and
mends the cluster:

1. two workers train; after checkpoint 16 the second node is killed (raylet, object store, worker):
   the group restarts on 1 worker from the last checkpoint;
2. a new node joins: Ray Train's elastic monitor grows the group back to 2;
3. that node's ``ray start`` gets SIGTERM, which Ray 2.60 turns into a preemption drain with a
   30 s deadline: the workers checkpoint at the next step boundary and the group resumes on 1
   worker from *that* step, not from the last periodic checkpoint.

Every rank logs the anchors it trains per step (``SPARSE_RAY_TEST_ROW_LOG``); along the run's
lineage (each attempt counts up to the step the next one resumed from) every row of every epoch
is trained exactly once, and ``run.json`` agrees (``rows_skipped_on_resize``/``rows_repeated_on_resize``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults import kill_tree, registered, stop_tree, wait_for

from sparse_ray.driver.localray import MULTI_NODE_ENV, add_node, start

pytestmark = pytest.mark.slow

EPOCHS, SAVE = 4, 16


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _groups(rows: Path) -> list[dict]:
    """Every group start the row log saw, in order: its id, resume step, size, and rows per step."""
    found: dict[int, dict] = {}
    for path in rows.glob("group-*-rank-*.jsonl"):
        _, ns, _, start, _, size, _, rank = path.stem.split("-")
        group = found.setdefault(int(ns), {"from": int(start), "workers": int(size), "ranks": {}})
        group["ranks"][int(rank)] = _lines(path)
    return [found[k] for k in sorted(found)]


def _started(rows: Path, workers: int, after: int) -> bool:
    """A group of ``workers`` started after the first ``after`` groups, and all its ranks logged a step."""
    groups = _groups(rows)[after:]
    return any(g["workers"] == workers and len(g["ranks"]) == workers and all(g["ranks"].values()) for g in groups)


@pytest.fixture
def gpu_nodes():
    cluster = start(nodes=2, cpus=3, gpus=1)
    yield cluster
    cluster.stop()


def test_an_elastic_run_shrinks_grows_and_checkpoints_on_a_drain_without_losing_a_row(gpu_nodes, tiny_base, tmp_path):
    out, rows = tmp_path / "run", tmp_path / "rows"
    sets = [
        "data.path=sample",
        f"model.base={tiny_base}",
        f"output={out}",
        "cluster.workers=1-2",
        "cluster.gpus_per_worker=1",
        "cluster.zero=0",
        "cluster.elastic_resize_monitor_interval_s=5",
        "train.global_batch=8",
        f"train.epochs={EPOCHS}",
        "data.max_samples=160",
        "data.eval_queries=10",
        "train.logging_steps=5",
        "train.eval_steps=100000",
        "train.learning_rate=1e-3",
        f"train.save_steps={SAVE}",
        "train.max_failures=4",
        "model.max_seq_length=32",
    ]
    cmd = [sys.executable, "-m", "sparse_ray.cli", "train", "--address", gpu_nodes.gcs_address]
    for item in sets:
        cmd += ["--set", item]
    env = {
        **os.environ,
        **MULTI_NODE_ENV,
        "SPARSE_RAY_TEST_DECLARED_GPUS": "1",
        "SPARSE_RAY_TEST_ROW_LOG": str(rows),
        "SPARSE_RAY_FAULT": "slow:0.5",
        # Ray Train counts the lost node's resources for a while and first tries the old size
        # again, for this long (default 60 s), before it starts the smaller group
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
    }
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: registered(out, "step-00000016"), 400, "checkpoint 16 with two workers")
        kill_tree(gpu_nodes.pids[1])  # node lost: 2 → 1
        wait_for(lambda: _started(rows, 1, 1), 300, "the group restarted on one worker")
        seen = len(_groups(rows))
        # a drainable node: SIGTERM gives it an 8 s preemption deadline (the others never drain)
        node = add_node(gpu_nodes, cpus=3, gpus=1, env={"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "8"})
        wait_for(lambda: _started(rows, 2, seen), 300, "the group grown back to two workers")
        os.kill(node, signal.SIGTERM)  # 2 → 1 through the drain
        proc.wait(timeout=600)
    finally:
        stop_tree(proc)
        log.close()
    printed = (tmp_path / "driver.log").read_text()
    assert proc.returncode == 0, printed[-4000:]
    run = json.loads((out / "run.json").read_text())
    groups = run["groups"]
    sizes = [g["workers"] for g in groups]
    resizes = run["resizes"]
    assert [(r["old_workers"], r["new_workers"]) for r in resizes][:3] == [(2, 1), (1, 2), (2, 1)], groups
    assert sizes[0] == 2 and sizes[-1] == 1
    assert resizes[0]["reason"].startswith("failure") and resizes[1]["reason"] == "capacity added"
    drained = resizes[2]
    assert drained["checkpoint"] == "preemption" and drained["step"] % SAVE, drained  # not a periodic step
    assert run["rows_skipped_on_resize"] == 0 and run["rows_repeated_on_resize"] == 0
    assert all(g["rows_replayed"] == g["rows_trained_in_epoch"] for g in groups), groups

    # the lineage: each group counts for its steps up to the step the next group resumed from
    logged = _groups(rows)
    assert [(g["from"], g["workers"]) for g in logged] == [(g["from_step"], g["workers"]) for g in groups]
    ends = [g["from"] for g in logged[1:]] + [run["train"]["global_step"]]
    per_step: dict[int, list[str]] = {}
    for group, end in zip(logged, ends, strict=True):
        for entries in group["ranks"].values():
            for entry in entries:
                if group["from"] < entry["step"] <= end:
                    per_step.setdefault(entry["step"], []).extend(entry["keys"])
    steps = run["plan"]["steps_per_epoch"]
    assert sorted(per_step) == list(range(1, steps * EPOCHS + 1))
    assert all(len(keys) == 8 for keys in per_step.values())  # the global batch, whatever the size
    for epoch in range(EPOCHS):
        keys = [k for s in range(epoch * steps + 1, (epoch + 1) * steps + 1) for k in per_step[s]]
        assert len(keys) == len(set(keys)) == steps * 8, f"epoch {epoch}: a row trained twice or lost"
    first = {k for s in range(1, steps + 1) for k in per_step[s]}
    last = {k for s in range((EPOCHS - 1) * steps + 1, EPOCHS * steps + 1) for k in per_step[s]}
    assert first == last  # every epoch trains the same rows

    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(out / "model"), device="cpu")
    assert model.encode_query(["read a file"]).coalesce().values().numel() > 0
    losses = [e["loss"] for e in run["losses"]]
    assert len(losses) == steps * EPOCHS // 5 and all(0 < x < 10 for x in losses)
    print("elastic run: groups", [(g["workers"], g["from_step"], g["from"]) for g in groups])
    print("resizes", resizes)
    print("losses", [round(x, 4) for x in losses])

"""The README's bad-input table, one test per line: what a user sees for each mistake.

Each case runs the real command line (``main``) and checks the exit status, that the message is one
line naming the problem, that no traceback is printed, and that it came back in bounded time.
Row-level problems (bad JSON, wrong types, truncated gzip, ...) are counted skips: see
``test_data.py`` (``test_bad_rows_are_dropped_with_their_reason``, ``test_count_pass_is_exact_on_broken_shards``).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import free_port, write_shard

from sparse_ray.cli import main
from sparse_ray.config import load_config
from sparse_ray.driver import launch


def fails(capsys, argv: list[str], message: str, within: float = 60) -> str:
    started = time.monotonic()
    rc = main(argv)
    took = time.monotonic() - started
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, captured.out[-2000:] + err[-2000:]
    assert "Traceback" not in captured.out + captured.err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert took < within, f"took {took:.0f}s"
    return lines[0]


def train(*args: str) -> list[str]:
    return ["train", "--set", "data.max_samples=64", "--set", "model.max_seq_length=32", *args]


def test_missing_data_path(capsys, tmp_path):
    fails(capsys, train("--data", str(tmp_path / "nowhere"), "--dry-run"), "no CornStack shards")


def test_a_shard_that_is_not_json_leaves_nothing_to_train_on(ray_cluster, capsys, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "shard-00000.jsonl.gz").write_bytes(gzip.compress(os.urandom(4000)))
    fails(capsys, train("--data", str(tmp_path / "d"), "--dry-run"), "valid training rows cannot fill one batch")


def test_rows_that_are_all_bad_leave_nothing_to_train_on(ray_cluster, capsys, tmp_path):
    bad = [json.dumps({"query": 5, "document": "d", "negatives": []}), json.dumps({"query": "", "document": ""})]
    write_shard(tmp_path / "d" / "shard-00000.jsonl.gz", bad * 50 + [b"\xff\xfe not utf-8"])
    fails(capsys, train("--data", str(tmp_path / "d"), "--dry-run"), "0 valid training rows cannot fill one batch")


def test_unreachable_s3_endpoint(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    fails(capsys, train("--data", "s3://bucket/cornstack", "--dry-run"), "cannot list s3://bucket/cornstack", 90)


def test_wrong_credentials(capsys, monkeypatch, tmp_path):
    """A second S3 server that checks signatures; the keys we send are not known to it."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        line = fails(capsys, train("--data", "s3://bucket/cornstack", "--dry-run"), "cannot list s3://bucket/cornstack")
        assert "AKIAWRONGWRONGWRONG1" not in line or "InvalidAccessKeyId" in line
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in line
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError("moto did not start")


def test_unreachable_ray_address():
    """In a fresh process, as a user runs it (this test process already has a Ray cluster)."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "sparse_ray.cli", *train("--data", "sample", "--address", address, "--dry-run")]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: cannot reach the Ray cluster")], proc.stderr
    assert time.monotonic() - started < 120


def test_gpus_requested_where_there_are_none(ray_cluster, capsys, tmp_path):
    if ray_cluster.cluster_resources().get("GPU"):
        pytest.skip("this cluster has GPUs")
    argv = train("--data", "sample", "--gpus-per-worker", "1", "--output", str(tmp_path / "r"))
    # A plain `ray start --head` runs an autoscaler with only the head's node type: it is asked,
    # launches nothing, and the run fails in one line naming what the cluster has.
    line = fails(capsys, argv, "launches no node for 2 workers × (1 CPU + 1 GPU)")
    assert line.endswith("0 GPUs (at most 0 per node)"), line


def test_output_holding_a_different_run(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    previous = {"train": {"learning_rate": 1.0}, "output": str(out)}
    (out / "run-config.json").write_text(json.dumps(previous))
    fails(capsys, train("--data", "sample", "--output", str(out)), "holds a different run")


def test_resume_without_a_run(capsys, tmp_path):
    fails(capsys, train("--data", "sample", "--output", str(tmp_path / "empty"), "--resume"), "holds no run to resume")


def test_a_teacher_that_cannot_be_loaded_fails_before_ray_starts(capsys, tmp_path):
    argv = train("--data", "sample", "--set", "train.loss=mnrl+kl", "--set", f"train.teacher={tmp_path / 'none'}")
    fails(capsys, [*argv, "--dry-run"], f"model {tmp_path / 'none'} does not exist", within=30)


def test_a_hub_base_model_offline_fails_at_once(capsys, monkeypatch):
    """Not in the local cache and no hub: one line before Ray starts, not a minute of retries per worker."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = train("--data", "sample", "--base-model", "no-such-org/no-such-model")
    fails(capsys, argv, "no-such-org/no-such-model is neither a local directory nor in the Hugging Face cache", 30)


def test_bad_config_value(capsys):
    fails(capsys, train("--set", "train.stall_timeout=-1"), "train.stall_timeout must be >= 0")


def test_gigantic_documents_are_cut_and_counted(ray_cluster, capsys, tmp_path):
    rows = [
        json.dumps({"query": f"q {i}", "document": "x = 1\n" * 200_000, "negatives": ["def f(): pass"]})
        for i in range(40)
    ]
    write_shard(tmp_path / "d" / "shard-00000.jsonl.gz", rows)
    cfg = load_config("quick_test", [f"data.path={tmp_path / 'd'}", "data.holdout_fraction=0", "data.num_negatives=1"])
    stats = launch.train(cfg, dry_run=True)["data"]["python"]
    assert stats["texts_cut"] == 40 and stats["train_rows"] == 40  # cut to data.max_document_chars, kept
    assert "40" in capsys.readouterr().out  # the data table shows it

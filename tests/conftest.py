"""Shared fixtures: one real local Ray cluster per session (loopback only), a tiny BERT built once.

The Ray processes are children of this pytest process and are stopped by ``ray.shutdown()`` at the
end of the session (never ``ray stop``, which would kill every Ray on the host).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sparse_ray.driver.localray import use_local_ray_env

use_local_ray_env()  # before anything imports ray

SAMPLE = Path(__file__).resolve().parent.parent / "sparse_ray" / "sample" / "python"


#: A line Ray forwards to the driver's stderr from one of its processes: ``(raylet) ...`` or
#: ``(ActorName pid=123) ...``, maybe coloured. The shared cluster's actors (say, the placement
#: group cleaner after an earlier test's run) can print one while a test captures stderr.
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|[^ ]+ pid=\d+)")


def own_lines(err: str) -> list[str]:
    """The non-empty lines of captured stderr that this process printed (Ray's forwarded lines removed)."""
    return [line for line in err.strip().splitlines() if line.strip() and not RAY_FORWARDED.match(line)]


def sample_rows(limit: int | None = None) -> list[dict]:
    rows = []
    with gzip.open(SAMPLE / "shard-00000.jsonl.gz", "rt") as fh:  # the standard library shard
        for line in fh:
            rows.append(json.loads(line))
            if limit and len(rows) == limit:
                break
    return rows


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT masked-LM with a WordPiece vocabulary trained on the bundled sample."""
    from sparse_ray.model import make_tiny_base

    rows = sample_rows(600)
    texts = [r["query"] for r in rows] + [r["document"] for r in rows]
    # 998 tokens: not a multiple of the ZeRO flat-buffer alignment, like real vocabularies (30522)
    return make_tiny_base(str(tmp_path_factory.mktemp("tiny-bert")), texts, vocab_size=998, hidden=32)


@pytest.fixture(scope="session")
def tiny_splade(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved SPLADE SparseEncoder on the tiny base (untrained): read it, never write into it."""
    from sparse_ray.model import build_model

    out = tmp_path_factory.mktemp("tiny-splade") / "model"
    build_model("splade", tiny_base, 48).save(str(out))
    return str(out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto's standalone server, as s3fs's own tests use) on loopback.

    Its endpoint and dummy credentials go into this process's environment before Ray starts, so
    Ray workers inherit them like they would inherit a cluster's AWS settings. Stopped by its pid.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.3)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster with 4 logical CPUs, shared by every test that needs Ray.

    Depends on ``s3_server`` so that Ray's processes inherit the S3 endpoint and credentials.
    """
    import ray

    from sparse_ray.driver.localray import init_in_process
    from sparse_ray.driver.quiet import quiet_ray

    init_in_process(num_cpus=4, logging_level="WARNING")
    quiet_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def two_nodes():
    """A head and a second node, each with its own raylet and object store, on this machine."""
    from sparse_ray.driver.localray import start

    cluster = start(nodes=2, cpus=3)
    yield cluster
    cluster.stop()


def write_shard(path: Path, lines: list[str | bytes], gz: bool = True) -> Path:
    """Write raw lines (already serialised) as a shard; bytes are written as they are."""
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path

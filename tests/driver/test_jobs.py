"""Jobs and clusters: specs validate, cluster files pass their consumers' checks, and real runs go
through the Ray Jobs API on a real two-node local cluster (stopped by pid afterwards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import own_lines

from sparse_ray.cli import main
from sparse_ray.config import PROJECT_ROOT
from sparse_ray.driver import jobs
from sparse_ray.errors import ConfigError

JOBS = sorted((PROJECT_ROOT / "jobs").glob("*.yaml"))
SECRET = "s3cr3t-value-that-must-never-leak-42"


def test_every_shipped_spec_validates():
    names = {p.stem for p in JOBS}
    assert {"python", "java", "javascript", "typescript", "go", "rust", "cpp", "php", "ruby", "all"} <= names
    for path in JOBS:
        runs = jobs.plan_runs(jobs.load_spec(path))
        assert runs and all(r.entrypoint.startswith("python -m sparse_ray.cli train ") for r in runs)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("languages: [python]\n", "no data location"),
        ("languages: [python]\ndata: sample\nwings: 2\n", "unknown key(s) wings"),
        ("languages: [python]\ndata: sample\nzero: 7\n", "cluster.zero must be 0"),
        ("languages: [klingon]\ndata: sample\n", "unknown language 'klingon'"),
        ("languages: []\ndata: sample\n", "'languages' is empty"),
    ],
)
def test_bad_specs_fail_before_submitting(tmp_path, body, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jobs.plan_runs(jobs.load_spec(spec))


def test_unreachable_address_is_one_line_and_nothing_is_submitted(capsys):
    rc = main(["submit", str(PROJECT_ROOT / "jobs" / "python.yaml"), "--address", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Ray job server at http://127.0.0.1:9" in err
    assert len(own_lines(err)) == 1 and "Traceback" not in err


def test_aws_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((PROJECT_ROOT / "cluster" / "aws.yaml").read_text()))
    validate_config(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"worker.4xa10g", "worker.8xa100"} <= set(types)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reachable through the SSH tunnel only


def test_kuberay_manifests_have_what_the_operator_requires():
    cluster = yaml.safe_load((PROJECT_ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((PROJECT_ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["headGroupSpec"]["template"]["spec"]["containers"]
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            (worker,) = pod["containers"]
            assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod["volumes"])
    assert "sparse_ray.cli train" in job["spec"]["entrypoint"]


# ---------------------------------------------------------------- a real two-node cluster


@pytest.fixture
def head():
    """A real Ray head with the job server on 127.0.0.1, stopped by its pid afterwards."""
    from sparse_ray.driver.localray import start

    cluster = start(nodes=1, cpus=4)
    yield cluster
    cluster.stop()


def tiny_spec(tmp_path: Path, base: str, name: str, samples: int = 32, extra: list[str] | None = None) -> Path:
    spec = {
        "name": name,
        "languages": ["python"],
        "preset": "quick_test",
        "base_model": base,
        "workers": 2,
        "zero": 2,
        "data": "sample",
        "output": str(tmp_path / "{name}"),
        "env": ["SPARSE_RAY_TEST_SECRET"],
        "set": [f"data.max_samples={samples}", "model.max_seq_length=32", "data.eval_queries=10", *(extra or [])],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_submit_follow_stop_list_and_secrets(head, tiny_base, tmp_path, capsys, monkeypatch):
    from ray.job_submission import JobSubmissionClient
    from sentence_transformers import SparseEncoder

    monkeypatch.setenv("SPARSE_RAY_TEST_SECRET", SECRET)
    address = head.dashboard_url
    rc = main(["submit", str(tiny_spec(tmp_path, tiny_base, "tiny")), "--address", address, "--follow"])
    printed = capsys.readouterr()
    assert rc == 0, printed.out[-3000:]
    assert SparseEncoder(str(tmp_path / "tiny" / "model"), device="cpu").encode_query(["open a file"]).shape[-1] > 0

    slow = tiny_spec(tmp_path, tiny_base, "long", samples=1900, extra=["train.epochs=5"])
    assert main(["submit", str(slow), "--address", address]) == 0
    client = JobSubmissionClient(address)
    long_job = next(j for j in client.list_jobs() if (j.metadata or {}).get("sparse_ray_name") == "long")
    assert main(["jobs", "--address", address, "stop", long_job.submission_id]) == 0
    assert main(["jobs", "--address", address, "logs", long_job.submission_id, "--follow"]) == 1
    assert client.get_job_status(long_job.submission_id).value == "STOPPED"

    assert main(["jobs", "--address", address, "list"]) == 0
    listing = capsys.readouterr().out
    infos = client.list_jobs()
    assert {"SUCCEEDED", "STOPPED"} <= {j.status.value for j in infos}
    for info in infos:
        assert info.submission_id[:20] in listing
        assert info.metadata["language"] == "python" and info.metadata["git_commit"]
        assert SECRET not in info.entrypoint and SECRET not in json.dumps(info.metadata)
    assert SECRET not in printed.out + printed.err + listing

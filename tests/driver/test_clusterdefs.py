"""Job specs and cluster files cannot drift apart: every spec in ``jobs/`` fits every cluster
definition in ``cluster/`` (GPUs, CPUs per worker, placement), every manifest runs the image
``cluster/Dockerfile`` builds (same Ray, Python and torch), entrypoints are real commands of this
CLI, clusters are joined through ``RAY_ADDRESS``, and the KubeRay manifests validate strictly
against the operator's own CRD schemas (KubeRay v1.7.0, vendored in ``tests/kuberay_crds``)."""

from __future__ import annotations

import gzip
import re
import shlex
from pathlib import Path

import pytest
import yaml

from sparse_ray.cli import parser as build_parser
from sparse_ray.config import PROJECT_ROOT, load_config
from sparse_ray.driver import clusterdefs, jobs
from sparse_ray.driver.cluster import ray_address
from sparse_ray.errors import ConfigError

SPECS = sorted((PROJECT_ROOT / "jobs").glob("*.yaml"))
CLUSTER_FILES = [PROJECT_ROOT / "cluster" / "aws.yaml", *sorted((PROJECT_ROOT / "cluster" / "kuberay").glob("*.yaml"))]
STANDING = [p for p in CLUSTER_FILES if "kind: RayJob" not in p.read_text()]
DOCKERFILE = (PROJECT_ROOT / "cluster" / "Dockerfile").read_text()
CRDS = Path(__file__).parent.parent / "kuberay_crds"


def _runs() -> list[jobs.Run]:
    return [run for path in SPECS for run in jobs.plan_runs(jobs.load_spec(path))]


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf'^ARG {name}="?([^"\n]+)"?$', DOCKERFILE, re.M)
    assert match, f"cluster/Dockerfile has no ARG {name}"
    return match.group(1)


def _image_tag() -> str:
    version = re.search(r'^version = "([^"]+)"', (PROJECT_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return f"sparse-ray:{version}"


@pytest.mark.parametrize("cluster_file", STANDING, ids=lambda p: p.name)
def test_every_spec_fits_every_cluster(cluster_file):
    """Specs are submitted to the standing clusters; a RayJob brings its own cluster for its own
    entrypoint and is held to that run (test_rayjob_runs_exactly_what_submit_runs_for_python)."""
    cluster = clusterdefs.load(cluster_file)
    assert cluster.kind != "RayJob"
    assert any(t.resources.get("GPU") for t in cluster.node_types), "a GPU cluster offers GPUs"
    for run in _runs():
        assert cluster.misfit(run.config) is None, f"{run.spec.path}: {cluster.misfit(run.config)}"


def test_a_spec_that_asks_for_more_than_a_cluster_has_is_caught(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("languages: [python]\ndata: sample\nworkers: 40\ngpus_per_worker: 1\n")
    (run,) = jobs.plan_runs(jobs.load_spec(spec))
    message = clusterdefs.load(PROJECT_ROOT / "cluster" / "kuberay" / "raycluster.yaml").misfit(run.config)
    assert message == (
        "raycluster.yaml can never place 40 workers × (1 CPU + 1 GPU): at most 9 nodes, 256 CPUs, "
        "32 GPUs (at most 4 per node)"
    )
    wide = load_config("quick_test", ["cluster.workers=2", "cluster.gpus_per_worker=9"])
    assert "at most 8 per node" in clusterdefs.load(PROJECT_ROOT / "cluster" / "aws.yaml").misfit(wide)


def test_submit_refuses_a_spec_the_cluster_file_cannot_hold(tmp_path, capsys):
    from sparse_ray.cli import main

    spec = tmp_path / "big.yaml"
    spec.write_text("languages: [python]\ndata: sample\nworkers: 40\ngpus_per_worker: 1\n")
    cluster_file = str(PROJECT_ROOT / "cluster" / "kuberay" / "raycluster.yaml")
    rc = main(["submit", str(spec), "--dry-run", "--cluster-file", cluster_file])
    err = capsys.readouterr().err
    assert rc == 2 and "raycluster.yaml can never place 40 workers" in err and "Traceback" not in err
    assert (
        main(["submit", str(PROJECT_ROOT / "jobs" / "python.yaml"), "--dry-run", "--cluster-file", cluster_file]) == 0
    )


def test_manifests_run_the_image_the_dockerfile_builds():
    ray_version = _dockerfile_arg("RAY_VERSION")
    import ray

    assert ray.__version__ == ray_version, "the tests run the Ray the image pins"
    base = re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py(\d)(\d+)-gpu$", DOCKERFILE, re.M)
    assert base, "the image starts from a pinned rayproject/ray GPU image"
    python = (int(base.group(1)), int(base.group(2)))
    assert python >= (3, 10), "requires-python >= 3.10"
    torch_pin = re.search(r"^TORCH_SPEC \?= (\S+)$", (PROJECT_ROOT / "Makefile").read_text(), re.M).group(1)
    assert _dockerfile_arg("TORCH_SPEC") == torch_pin and "/cu1" in _dockerfile_arg("TORCH_INDEX")
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+(?: \S+)*) \S+$", DOCKERFILE, re.M):
        for name in src.split():
            assert (PROJECT_ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"
    for path in CLUSTER_FILES[1:]:
        cluster = clusterdefs.load(path)
        assert cluster.images == {_image_tag()}, f"{path.name} runs {cluster.images}"
        assert cluster.ray_version == ray_version
    aws = yaml.safe_load((PROJECT_ROOT / "cluster" / "aws.yaml").read_text())
    assert any(torch_pin in cmd for cmd in aws["setup_commands"]), "aws.yaml installs the same torch"


def test_rayjob_runs_exactly_what_submit_runs_for_python():
    (python_run,) = jobs.plan_runs(jobs.load_spec(PROJECT_ROOT / "jobs" / "python.yaml"))
    job = clusterdefs.load(PROJECT_ROOT / "cluster" / "kuberay" / "rayjob.yaml")
    assert job.entrypoint == python_run.entrypoint
    assert job.misfit(python_run.config) is None and not job.autoscaling


def test_entrypoints_are_commands_of_this_cli_and_join_through_ray_address(monkeypatch):
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'sparse-ray = "sparse_ray.cli:main"' in pyproject
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    job = clusterdefs.load(PROJECT_ROOT / "cluster" / "kuberay" / "rayjob.yaml")
    for run in _runs():
        argv = shlex.split(run.entrypoint)
        assert argv[:3] == ["python", "-m", "sparse_ray.cli"]
        args = build_parser().parse_args(argv[3:])
        assert args.command == "train" and args.address is None, "a job joins the cluster it runs on"
        assert ray_address(run.config) == "10.0.0.1:6379"
    assert "--address" not in job.entrypoint and "RAY_ADDRESS" not in job.env


def test_cluster_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "deployment.yaml"
    bad.write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match="neither a Ray cluster launcher file nor a KubeRay"):
        clusterdefs.load(bad)
    vague = tmp_path / "vague.yaml"
    vague.write_text(
        "head_node_type: h\navailable_node_types:\n  h: {resources: {}}\n  w: {resources: {}, max_workers: 2}\n"
    )
    with pytest.raises(ConfigError, match="node type w declares no CPU count"):
        clusterdefs.load(vague)


# ---------------------------------------------------------------- the operator's CRD schemas


def _strict(schema: dict) -> dict:
    """The CRD schema as ``kubectl apply --validate=strict`` reads it: unknown fields are errors
    (the API server would otherwise prune them silently, e.g. a misspelt ``maxReplica``)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(kind: str):
    import jsonschema

    with gzip.open(CRDS / f"ray.io_{kind.lower()}s-v1.7.0.yaml.gz", "rt") as f:
        crd = yaml.safe_load(f)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_validate_against_the_crd(name):
    manifest = yaml.safe_load((PROJECT_ROOT / "cluster" / "kuberay" / name).read_text())
    validator = _crd_validator(manifest["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    assert errors == []
    broken = yaml.safe_load((PROJECT_ROOT / "cluster" / "kuberay" / name).read_text())
    spec = broken["spec"] if manifest["kind"] == "RayCluster" else broken["spec"]["rayClusterSpec"]
    spec["workerGroupSpecs"][0]["maxReplica"] = 8  # a typo the API server would drop without a word
    assert any("maxReplica" in e.message for e in validator.iter_errors(broken))

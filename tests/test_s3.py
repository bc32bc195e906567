"""S3 through s3fs against a real S3 protocol server on loopback: reading shards and writing a run."""

from __future__ import annotations

import pytest
import s3fs
from conftest import SAMPLE

from sparse_ray import data
from sparse_ray.config import load_config
from sparse_ray.errors import DataError


@pytest.fixture
def bucket(s3_server) -> str:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    name = f"bucket-{abs(hash(s3_server)) % 10**8}"
    if not fs.exists(name):
        fs.mkdir(name)
        fs.put(str(next(SAMPLE.glob("shard-*.jsonl.gz"))), f"{name}/cornstack/python/shard-00000.jsonl.gz")
    return name


def test_count_pass_reads_shards_from_s3(ray_cluster, bucket):
    cfg = load_config("quick_test", [f"data.path=s3://{bucket}/cornstack", "data.languages=python"])
    sources = data.resolve_sources(cfg)
    assert sources[0].files == [f"{bucket}/cornstack/python/shard-00000.jsonl.gz"]
    local = load_config("quick_test", ["data.path=sample"])
    s3_stats = data.count(data.read(cfg, sources)).to_dict()
    assert s3_stats == data.count(data.read(local, data.resolve_sources(local))).to_dict()


def test_missing_s3_prefix_is_a_clear_error(s3_server, bucket):
    with pytest.raises(DataError, match=f"no CornStack shards .* under s3://{bucket}/nothing"):
        data.list_shards(f"s3://{bucket}/nothing", "python")


@pytest.mark.slow
def test_training_writes_its_run_to_s3(ray_cluster, s3_server, tiny_base, bucket, tmp_path):
    from sentence_transformers import SparseEncoder

    from sparse_ray.launch import train

    out = f"s3://{bucket}/runs/tiny"
    cfg = load_config(
        "quick_test",
        [f"data.path=s3://{bucket}/cornstack", f"model.base={tiny_base}", f"output={out}", "data.max_samples=32"]
        + ["model.max_seq_length=32", "data.eval_queries=10", "cluster.zero=2"],
    )
    result = train(cfg)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    files = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/runs/tiny")}
    assert {"run.json", "run-config.json", "model", "ray"} <= files
    fs.get(f"{bucket}/runs/tiny/model/", str(tmp_path / "model"), recursive=True)
    assert SparseEncoder(str(tmp_path / "model"), device="cpu").encode_query(["open a file"]).shape[-1] > 0
    assert result["train"]["global_step"] == result["plan"]["max_steps"]

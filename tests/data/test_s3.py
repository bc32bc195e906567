"""S3 through s3fs against a real S3 protocol server on loopback: reading shards and writing a run."""

from __future__ import annotations

import gzip

import pytest
import s3fs
from conftest import SAMPLE

from sparse_ray.config import load_config
from sparse_ray.data import pipeline, sources
from sparse_ray.errors import DataError


@pytest.fixture
def bucket(s3_server) -> str:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    name = f"bucket-{abs(hash(s3_server)) % 10**8}"
    if not fs.exists(name):
        fs.mkdir(name)
        for shard in sorted(SAMPLE.glob("shard-*.jsonl.gz")):  # every shard of the bundled python sample
            fs.put(str(shard), f"{name}/cornstack/python/{shard.name}")
    return name


def test_count_pass_reads_shards_from_s3(ray_cluster, bucket):
    cfg = load_config("quick_test", [f"data.path=s3://{bucket}/cornstack", "data.languages=python"])
    found = sources.resolve_sources(cfg)
    assert found[0].files == [f"{bucket}/cornstack/python/{f.name}" for f in sorted(SAMPLE.glob("shard-*.jsonl.gz"))]
    local = load_config("quick_test", ["data.path=sample"])
    s3_stats = pipeline.count(pipeline.read(cfg, found)).to_dict()
    assert s3_stats == pipeline.count(pipeline.read(local, sources.resolve_sources(local))).to_dict()


def test_missing_s3_prefix_is_a_clear_error(s3_server, bucket):
    with pytest.raises(DataError, match=f"no CornStack shards .* under s3://{bucket}/nothing"):
        sources.list_shards(f"s3://{bucket}/nothing", "python")


@pytest.mark.slow
def test_training_writes_its_run_to_s3(ray_cluster, s3_server, tiny_base, bucket, tmp_path):
    from sentence_transformers import SparseEncoder

    from sparse_ray.driver.launch import train

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


def test_mirror_copies_to_s3_resumes_and_training_reads_the_mirror(s3_server, bucket, tmp_path, ray_cluster):
    from sparse_ray.cli import main
    from sparse_ray.tools.mirror import mirror

    src = tmp_path / "cornstack" / "go"
    src.mkdir(parents=True)
    sample = next((sources.SAMPLE_DIR / "go").glob("shard-*.jsonl.gz")).read_bytes()
    for i in range(3):
        (src / f"shard-0000{i}.jsonl.gz").write_bytes(sample)
    to = f"s3://{bucket}/mirror"
    first = mirror("go", to, str(tmp_path / "cornstack"))
    assert sorted(first.copied) == [f"shard-0000{i}.jsonl.gz" for i in range(3)] and not first.skipped
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    assert fs.cat(f"{bucket}/mirror/go/shard-00001.jsonl.gz") == sample
    # a shard cut short on the target (an interrupted copy elsewhere) is copied again; the rest skipped
    fs.pipe(f"{bucket}/mirror/go/shard-00002.jsonl.gz", sample[:100])
    fs.invalidate_cache()
    second = mirror("go", to, str(tmp_path / "cornstack"))
    assert second.copied == ["shard-00002.jsonl.gz"] and len(second.skipped) == 2
    assert fs.cat(f"{bucket}/mirror/go/shard-00002.jsonl.gz") == sample
    # the training path reads the mirror like any other source
    cfg = load_config("quick_test", [f"data.path={to}", "data.languages=go,python"])
    with pytest.raises(DataError, match="no CornStack shards .*for python"):
        sources.resolve_sources(cfg)
    mirror("python", to, "sample")  # a second language under the same prefix: single-language reads stay apart
    cfg = load_config("quick_test", [f"data.path={to}", "data.languages=go"])
    assert sources.resolve_sources(cfg)[0].root == f"{to}/go"
    assert pipeline.count(pipeline.read(cfg, sources.resolve_sources(cfg))).read["go"] == 3 * len(
        gzip.decompress(sample).splitlines()
    )
    # through the CLI, the default source is the hub: offline it fails fast, naming --from
    assert main(["data", "mirror", "--language", "go", "--to", to]) == 2


def test_mirror_from_the_hub_offline_names_the_flag(capsys):
    from sparse_ray.tools.mirror import mirror

    with pytest.raises(DataError, match="Hugging Face hub .*pass --from"):
        mirror("python", "/tmp/never-written")

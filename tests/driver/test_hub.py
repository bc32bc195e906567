"""Pushing to the hub: the up-front checks, the model card, and the upload of a published model
(local and s3://) to a loopback stand-in for the hub's HTTP API (the only part replaced)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import own_lines
from fakehub import FakeHub

from sparse_ray.cli import main
from sparse_ray.config import load_config
from sparse_ray.driver import hub
from sparse_ray.errors import ConfigError, UserError


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def published(tiny_base, tmp_path_factory) -> dict:
    """A finished local run: its model published under <output>/model and its run.json record."""
    from sparse_ray.model import build_model

    out = tmp_path_factory.mktemp("hub") / "code-splade"
    build_model("splade", tiny_base, 32).save(str(out / "model"))
    cfg = load_config("quick_test", ["data.path=sample", f"output={out}", "push_to_hub=me/tiny"])
    metrics = {"ndcg@10": 0.5, "mrr@10": 0.4, "query_active_dims": 20.0, "queries": 40, "corpus": 40}
    return {
        "output": str(out),
        "config": cfg.to_dict(),
        "train": {"global_step": 4},
        "data": {"python": {"rows_read": 64, "train_rows": 60, "holdout_rows": 4}},
        "eval": {"untrained": {**metrics, "ndcg@10": 0.25}, "trained": metrics},
        "versions": {"sparse-ray": "0.1.0"},
        "wall_seconds": 30.0,
    }


def model_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_pushed(server: FakeHub, run: dict, tmp_path: Path) -> None:
    from sentence_transformers import SparseEncoder

    assert server.unexpected == [] and server.tokens == {"Bearer hf_test_token"}
    assert [(c["organization"], c["name"]) for c in server.created] == [("me", "tiny")]
    (commit,) = server.commits
    assert commit["repo"] == "me/tiny" and commit["message"] == "sparse-ray: 4 steps"
    local = model_files(Path(run["output"]) / "model")
    local.pop("README.md", None)  # replaced by the run's card
    files = commit["files"]
    assert {k: v for k, v in files.items() if k != "README.md"} == local
    assert files["README.md"].decode() == hub.model_card(run, "me/tiny") == server.validated[0]
    # what the hub now holds is a model sentence-transformers loads without sparse-ray
    for name, data in files.items():
        (tmp_path / "hub" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "hub" / name).write_bytes(data)
    assert SparseEncoder(str(tmp_path / "hub"), device="cpu").encode_query(["read a file"]).shape[-1] > 0


def test_push_uploads_the_published_model_with_its_card(fake_hub, published, tmp_path):
    url = hub.push(published, "me/tiny")
    assert url == f"{fake_hub.endpoint}/me/tiny"
    assert_pushed(fake_hub, published, tmp_path)


def test_push_from_an_s3_output_downloads_the_model_first(fake_hub, published, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("hub-push")
    fs.put(os.path.join(published["output"], "model"), "hub-push/run/model", recursive=True)
    run = {**published, "output": "s3://hub-push/run"}
    hub.push(run, "me/tiny")
    assert_pushed(fake_hub, {**run, "output": published["output"]}, tmp_path)


def test_model_card_carries_hub_metadata_metrics_and_the_config(published):
    card = hub.model_card(published, "me/tiny")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "sentence-transformers" and "sparse-encoder" in front["tags"]
    assert "| ndcg@10 | 0.2500 | 0.5000 |" in card and "40 queries" in card
    assert "| python | 64 | 60 | 4 |" in card and "4 steps, global batch 16" in card
    config = re.search(r"```yaml\n(.*?)```", card, re.S).group(1)
    assert yaml.safe_load(config) == published["config"]
    assert 'SparseEncoder("me/tiny")' in card
    assert "Documents longer than" not in card  # a stock model: nothing to say about long documents
    windowed = {**published, "config": {**published["config"]}}
    windowed["config"]["model"] = {**published["config"]["model"], "document_windows": 4}
    assert (
        "Documents longer than 128 tokens: the metrics below read up to 4 windows of 128 tokens per document, "
        "later windows weighted 0.3" in hub.model_card(windowed, "me/tiny")
    )


def test_offline_push_is_one_line_and_keeps_the_model(published, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    from conftest import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(UserError, match=r"^model saved at .*code-splade/model, but pushing it to me/tiny failed: "):
        hub.push(published, "me/tiny")
    assert (Path(published["output"]) / "model" / "modules.json").is_file()


def test_bare_flag_takes_the_output_name():
    from sparse_ray.cli import parser

    args = parser().parse_args(["train", "--output", "s3://b/runs/code-splade/", "--push_to_hub"])
    assert args.push_to_hub == "auto"
    cfg = load_config("quick_test", ["output=s3://b/runs/code-splade/", "push_to_hub=auto"])
    assert hub.repo_id(cfg) == "code-splade"
    assert hub.repo_id(load_config("quick_test", ["push_to_hub=org/model"])) == "org/model"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--push-to-hub", "bad repo!"], {"HF_TOKEN": "hf_x"}, "push_to_hub: 'bad repo!' is no hub repo id"),
        (["--push-to-hub", "me/tiny"], {}, "push_to_hub needs a Hugging Face token: set HF_TOKEN"),
    ],
)
def test_repo_id_and_token_are_checked_before_the_data(flags, env, message, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "r"), *flags]
    assert main(argv) == 2  # the data path does not exist either: the hub is checked first
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    with pytest.raises(ConfigError):
        hub.check(load_config("quick_test", [f"output={tmp_path / 'r'}", f"push_to_hub={flags[1]}"]))

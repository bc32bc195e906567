"""offline.py: a named model either loads from this machine or fails in one line, at once."""

from __future__ import annotations

import shutil
import socket
import time

import huggingface_hub.constants  # noqa: F401 - before a test sets HF_HUB_OFFLINE: read once, at import
import pytest
from conftest import free_port

from sparse_ray import offline
from sparse_ray.cli import main

REPO = "sparse-ray-test/tiny-splade"
BASE = "sparse-ray-test/tiny-bert"


@pytest.fixture
def hub_cache(tiny_splade, tiny_base, tmp_path, monkeypatch):
    """The tiny SPLADE model and its base laid out as Hugging Face cache entries of ``REPO`` and
    ``BASE`` (what a download leaves), the cache pointed there, and the hub a closed port on
    loopback (no ``HF_HUB_OFFLINE``: a machine without a route to the hub, whose loaders retry)."""
    import huggingface_hub.constants as hf

    for repo, path in ((REPO, tiny_splade), (BASE, tiny_base)):
        snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        shutil.copytree(path, snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return REPO


def test_local_paths_and_hub_ids_are_told_apart():
    assert offline.local_path("/abs/model") and offline.local_path("./m") and offline.local_path("a/b/c")
    assert not offline.local_path("minilm") and not offline.local_path("org/name")


def test_a_missing_directory_and_an_uncached_hub_id_offline_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline.model_unavailable(str(tmp_path)) is None
    assert offline.model_unavailable(str(tmp_path / "gone")) == f"{tmp_path / 'gone'} does not exist"
    why = offline.model_unavailable("no-such-org/no-such-model")
    assert why and "neither a local directory nor in the Hugging Face cache" in why and "HF_HUB_OFFLINE" in why
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    started = time.monotonic()
    reason = offline.hub_unreachable(timeout=2.0)  # this machine has no route to the hub; either way it is quick
    assert time.monotonic() - started < 2.5 and (reason is None or "huggingface.co" in reason)


def test_the_hub_is_probed_through_a_proxy_where_one_is_set(monkeypatch):
    """Behind a proxy the hub's own address may not connect while the proxy does: probe the proxy."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert "hub.invalid" in offline.hub_unreachable(timeout=2.0)
    port = free_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert f"cannot connect to 127.0.0.1:{port}" in offline.hub_unreachable(timeout=2.0)
    with socket.create_server(("127.0.0.1", 0)) as proxy:  # a proxy that answers: the hub counts as reachable
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert offline.hub_unreachable(timeout=2.0) is None
        monkeypatch.setenv("NO_PROXY", "hub.invalid")
        assert "hub.invalid" in offline.hub_unreachable(timeout=2.0)


def test_a_cached_hub_id_loads_offline_without_retrying(hub_cache, capsys):
    assert offline.model_unavailable(hub_cache) is None
    assert offline.load_kwargs(hub_cache) == {"local_files_only": True}
    started = time.monotonic()
    assert main(["explain", hub_cache, "def read_file(path): return open(path).read()", "--top-k", "3"]) == 0
    assert time.monotonic() - started < 20  # transformers' five retries with back-off take over a minute
    assert "top tokens" in capsys.readouterr().out


def test_a_cached_hub_base_model_builds_and_plans_offline(hub_cache):
    from sparse_ray.config import resolve_base_model
    from sparse_ray.driver.memory import model_shape
    from sparse_ray.model import build_model

    started = time.monotonic()
    assert resolve_base_model(BASE) == BASE
    assert model_shape(BASE, "splade").vocab == 998
    model = build_model("splade", BASE, 48)
    assert model.encode_query(["read a file"]).shape[-1] == 998
    assert time.monotonic() - started < 20


def test_an_uncached_hub_id_offline_is_one_line_at_once(hub_cache, capsys):
    started = time.monotonic()
    assert main(["explain", "no-such-org/no-such-model", "text"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - started < 10
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no-such-org/no-such-model is neither a local directory" in lines[0], err
    assert "cannot connect to 127.0.0.1" in lines[0]

"""Tracker checks on the driver: one line before any data is read, and what the workers are given.
The end-to-end read-back of W&B and MLflow runs is in test_train (the DDP run)."""

from __future__ import annotations

import pytest
from conftest import own_lines

from sparse_ray.cli import main
from sparse_ray.config import load_config
from sparse_ray.driver import tracking
from sparse_ray.errors import ConfigError


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc


def cfg(*overrides: str):
    return load_config("quick_test", ["data.path=sample", *overrides])


def test_online_wandb_without_a_key_fails_in_one_line_before_the_data(no_wandb_login, capsys, tmp_path):
    argv = ["train", "--data", str(tmp_path / "missing"), "--report-to", "wandb", "--output", str(tmp_path / "r")]
    assert main(argv) == 2  # the data path does not exist: the tracker is checked first
    err = own_lines(capsys.readouterr().err)
    assert err == [
        "error: train.report_to=wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`; "
        "WANDB_MODE=offline logs locally)"
    ]


def test_offline_wandb_and_a_netrc_login_pass(no_wandb_login, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracking.check(cfg("train.report_to=wandb,mlflow"))
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    tracking.check(cfg("train.report_to=wandb"))


def test_report_to_is_a_list_of_known_trackers():
    assert cfg("train.report_to=wandb, mlflow").train.trackers == ["wandb", "mlflow"]
    assert cfg().train.trackers == []
    with pytest.raises(ConfigError, match="comma-separated list of tensorboard, wandb, mlflow, got 'wandb,comet'"):
        cfg("train.report_to=wandb,comet")


def test_workers_get_tracker_settings_but_not_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_PROJECT", "code-search")
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = tracking.worker_env(cfg("train.report_to=wandb,mlflow", f"output={tmp_path / 'run'}"))
    assert local["WANDB_PROJECT"] == "code-search" and local["WANDB_DIR"] == str(tmp_path / "run")
    assert local["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert "WANDB_API_KEY" not in local and "MLFLOW_TRACKING_TOKEN" not in local
    remote = tracking.worker_env(cfg("train.report_to=wandb,mlflow", "output=s3://bucket/run"))
    assert "WANDB_DIR" not in remote and "MLFLOW_TRACKING_URI" not in remote
    assert tracking.worker_env(cfg("output=s3://bucket/run")) == {}

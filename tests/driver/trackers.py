"""Readers of what the trackers wrote, offline: a W&B run's transaction log and an MLflow store."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

#: W&B's ``.wandb`` file: a 7-byte header, then LevelDB-log records in 32 KiB blocks.
BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> list[Any]:
    """Every protobuf ``Record`` of an offline W&B run (``run-*.wandb``), in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    raws, partial, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        partial = chunk if kind in (1, 2) else partial + chunk  # full, first / middle, last
        if kind in (1, 4):
            raws.append(partial)
    records = []
    for raw in raws:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def wandb_history(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def wandb_config(records: list[Any]) -> dict[str, Any]:
    """The run's config after every update (the run record, then config records)."""
    config: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def mlflow_run(uri: str) -> tuple[Any, Any]:
    """(client, the single run of the store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1, f"one MLflow run (rank 0 only), got {len(runs)}"
    return client, runs[0]

"""End to end on a real local Ray cluster: Ray Data shards → Ray Train workers → SparseEncoderTrainer
under DeepSpeed ZeRO (gloo on CPU) → a saved model that loads, encodes, and has really trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub

from sparse_ray.config import load_config
from sparse_ray.driver.launch import train
from sparse_ray.model import build_model

pytestmark = pytest.mark.slow


def run(tmp_path: Path, base: str, *overrides: str) -> tuple[dict, Path]:
    out = tmp_path / "run"
    cfg = load_config(
        "quick_test",
        [
            "data.path=sample",
            f"model.base={base}",
            f"output={out}",
            "cluster.workers=2",
            "data.max_samples=64",
            "data.eval_queries=40",
            "train.batch_size=8",
            "train.logging_steps=1",
            "train.eval_steps=2",
            "train.save_steps=2",
            "train.learning_rate=1e-3",
            "model.max_seq_length=48",
            *overrides,
        ],
    )
    return train(cfg), out


def assert_trained(result: dict, out: Path, model_type: str, base: str) -> None:
    from sentence_transformers import SparseEncoder

    plan = result["plan"]
    assert result["train"]["global_step"] == plan["max_steps"] > 0
    # each worker trained on exactly its own Ray shard: no re-sharding, no dropped rows
    assert result["train"]["rows_per_rank"] == [plan["rows_per_slot"]] * 2
    assert json.loads((out / "run.json").read_text())["plan"] == plan
    assert len(result["losses"]) == plan["max_steps"]
    # the hold-out was evaluated during training every eval_steps, on all ranks
    history = result["eval_history"]
    assert [p["step"] for p in history] == list(range(2, plan["max_steps"] + 1, 2))
    assert all(0 <= p["ndcg@10"] <= 1 and p["query_active_dims"] > 0 for p in history)

    trained = SparseEncoder(str(out / "model"), device="cpu")
    torch.manual_seed(0)
    fresh = build_model(model_type, base, 48)
    trained_sd, fresh_sd = trained.state_dict(), fresh.state_dict()
    assert trained_sd.keys() == fresh_sd.keys()
    assert all(t.numel() > 0 for t in trained_sd.values()), "empty tensors: the ZeRO-3 save trap"
    changed = [k for k in trained_sd if not torch.equal(trained_sd[k], fresh_sd[k])]
    assert any("encoder.layer" in k for k in changed), "the transformer did not train"
    if model_type == "inference_free_splade":
        assert any("sub_modules.query" in k for k in changed), "the static query embedding did not train"

    if result["config"]["train"]["save_steps"]:
        # the periodic checkpoint is complete for this ZeRO stage: loadable, non-empty, resumable
        ckpt = min((out / "ray" / "train").glob("step-*"))
        step = json.loads((ckpt / "sparse_ray_state.json").read_text())["global_step"]
        midway = SparseEncoder(str(ckpt), device="cpu").state_dict()
        assert midway.keys() == fresh_sd.keys() and all(t.numel() > 0 for t in midway.values())
        assert (ckpt / f"global_step{step}").is_dir() or (ckpt / "optimizer.pt").is_file()

    assert_float32_files(out / "model", result["config"]["cluster"]["bf16"] == "true")
    emb = trained.encode_query(["parse a json string into a dict"], convert_to_tensor=True)
    assert emb.shape[-1] == trained.get_embedding_dimension()
    assert 0 < int((emb.to_dense() != 0).sum()) < emb.shape[-1] + 1


def assert_float32_files(model_dir: Path, bf16: bool) -> None:
    """Saved weights are float32; after bf16 training they are DeepSpeed's fp32 masters, which hold
    bits a bf16 copy cannot (a bf16 save upcast would not)."""
    from safetensors.torch import load_file

    files = sorted(model_dir.rglob("model.safetensors"))
    weights = {f"{f}:{k}": t for f in files for k, t in load_file(str(f)).items() if t.is_floating_point()}
    assert weights and {t.dtype for t in weights.values()} == {torch.float32}
    if bf16:
        layers = [t for k, t in weights.items() if "encoder.layer" in k]
        assert any(not torch.equal(t, t.bfloat16().float()) for t in layers), "bf16 copies saved, not the masters"


LANGS = ["python", "go", "rust"]


def assert_single_language_batches(result: dict) -> None:
    """64 rows per epoch = 4 steps of a global batch of 16, round-robin over three languages."""
    assert result["plan"]["schedule"] == [*LANGS, "python"]
    expected = {"python": 2, "go": 1, "rust": 1}
    assert result["languages"] == {
        lang: {"steps": n, "rows_planned": 16 * n, "rows_fed_last_attempt": 16 * n} for lang, n in expected.items()
    }
    # what the model saw, counted in each worker's collator: every batch held one language
    for rank in result["train"]["batching_per_rank"]:
        assert rank["mixed_batches"] == 0 and rank["batches"] == expected
    # each language has its own hold-out, evaluated separately
    assert set(result["eval_per_language"]) == set(LANGS)
    for lang in LANGS:
        assert result["data"][lang]["holdout_rows"] > 0
        assert 0 <= result["eval_per_language"][lang]["trained"]["ndcg@10"] <= 1


@pytest.mark.parametrize(
    ("zero", "model_type", "extra"),
    [
        # ZeRO-3 SPLADE: tests/driver/test_equivalence.py (the same steps as one worker); DDP SPLADE:
        # tests/driver/test_elastic.py (a loadable model after three resizes)
        # inference-free under ZeRO-3, on three languages at once, one language per batch, distilling
        # a hybrid teacher's global in-batch scores (the tiny BERT as a SentenceTransformer + BM25
        # with each language's statistics; the ids survive bf16 labels)
        (
            3,
            "inference_free_splade",
            [
                f"data.languages={','.join(LANGS)}",
                "data.language_sampling=round_robin",
                "train.loss=mnrl+inbatch_kl",
                "train.teacher={tiny}",
                "train.teacher_lexical_weight=0.3",
                "model.split_identifiers=true",
                "train.teacher_split_identifiers=true",  # the teacher actors split them as the student does
                "train.teacher_replicas=2",  # python's pool; go and rust have half its rows: one actor each
                "cluster.bf16=true",  # on CPU too: the saved model is the fp32 masters
                "model.document_windows=3",  # saved with the model: long documents read in 3 windows
                "model.document_window_weight=0.5",
            ],
        ),
        # ZeRO-2, with every tracker from rank 0 (read back offline), gradient checkpointing, and a
        # push to (a loopback stand-in for) the hub named after the output, as the bare flag does
        (
            2,
            "inference_free_splade",
            [
                "train.report_to=tensorboard,wandb,mlflow",
                "train.gradient_checkpointing=true",
                "push_to_hub=auto",
                # distils the shards' own scores (BM25 in the sample: scaled down to logits)
                "train.loss=mnrl+margin_mse",
                "train.teacher=data",
                "train.teacher_scale=0.1",
                "cluster.bf16=true",
                # BERT's schedule: the last half of the 4 steps read 96 tokens instead of 48
                "train.long_seq_length=96",
                "train.long_seq_fraction=0.5",
            ],
        ),
    ],
)
def test_two_workers_train_a_loadable_model(ray_cluster, tiny_base, tmp_path, monkeypatch, zero, model_type, extra):
    # ZeRO-2 SPLADE runs in test_reliability (reference run), test_s3 and the MiniLM test below
    monkeypatch.setenv("WANDB_MODE", "offline")  # forwarded to the workers by the driver
    monkeypatch.setenv("WANDB_SILENT", "true")
    fake_hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    try:
        extra = [e.replace("{tiny}", tiny_base) for e in extra]
        result, out = run(tmp_path, tiny_base, f"cluster.zero={zero}", f"model.type={model_type}", *extra)
    finally:
        fake_hub.stop()
    assert_trained(result, out, model_type, tiny_base)
    assert_distilled(result, extra, tiny_base)
    assert_long_steps(result, out, extra)
    assert_windows(out, extra)
    if "data.language_sampling=round_robin" in extra:
        assert_single_language_batches(result)
    if any(e.startswith("train.report_to=") for e in extra):
        events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
        assert len(events) == 1, events  # one writer: rank 0
        assert_tracked(result, out)
    if "push_to_hub=auto" in extra:
        from sparse_ray.driver.hub import model_card

        assert result["hub"] == f"{fake_hub.endpoint}/tester/run" == json.loads((out / "run.json").read_text())["hub"]
        (commit,) = fake_hub.commits
        assert commit["files"]["README.md"].decode() == model_card(result, "run")
        weights = sorted((out / "model").rglob("model.safetensors"))
        assert weights, "the published model has weights"
        for path in weights:  # an inference-free model keeps one per side (Router sub-modules)
            assert commit["files"][str(path.relative_to(out / "model"))] == path.read_bytes()
    else:
        assert fake_hub.commits == [] and "hub" not in result


def assert_long_steps(result: dict, out: Path, extra: list[str]) -> None:
    """``train.long_seq_length``: every rank cut its last steps' batches at the long length (counted
    in its collator), and the saved model encodes that length."""
    from sentence_transformers import SparseEncoder

    long = next((int(e.split("=")[1]) for e in extra if e.startswith("train.long_seq_length=")), 0)
    expected = 2 if long else 0  # half of the 4 steps
    assert [r["long_batches"] for r in result["train"]["batching_per_rank"]] == [expected, expected]
    if long:
        assert SparseEncoder(str(out / "model"), device="cpu").max_seq_length == long


def assert_windows(out: Path, extra: list[str]) -> None:
    """``model.document_windows``: the final model is saved with its windows (and a stock one without)."""
    from sparse_ray import windows

    count = next((int(e.split("=")[1]) for e in extra if e.startswith("model.document_windows=")), 1)
    assert (out / "model" / windows.FILE).exists() is (count > 1)
    if count > 1:
        assert windows.read(str(out / "model")) == windows.DocumentWindows(count, 0.5)


def assert_distilled(result: dict, extra: list[str], tiny_base: str) -> None:
    """A distillation run logs its term at every step and records its teacher."""
    teacher = next((e.split("=", 1)[1] for e in extra if e.startswith("train.teacher=")), None)
    if teacher is None:
        assert "teacher" not in result and all("distill_loss" not in e for e in result["losses"])
        return
    assert all(e["distill_loss"] > 0 and e["base_loss"] > 0 for e in result["losses"]), result["losses"]
    if teacher == "data":
        assert result["teacher"] == {"source": "data", "loss": "mnrl+margin_mse"}
        return
    record = result["teacher"]
    assert record["source"] == tiny_base and record["dim"] == 32
    assert record["replicas"] == {"python": 2, "go": 1, "rust": 1}  # by each language's rows (32, 16, 16)
    assert record["rows_per_second"] > 0 and record["headroom"] > 0
    assert record["split_identifiers"] is ("train.teacher_split_identifiers=true" in extra)
    assert record["bf16"] is ("cluster.bf16=true" in extra)  # the teacher runs in the run's precision
    if any(e.startswith("train.teacher_lexical_weight=") for e in extra):
        assert record["bm25"]["weight"] == 0.3 and set(record["bm25"]["documents"]) == set(LANGS)
        assert all(n > 10 for n in record["bm25"]["documents"].values())


def assert_tracked(result: dict, out: Path) -> None:
    """W&B (offline) and MLflow (the output's SQLite store) hold rank 0's losses, equal to run.json's,
    the resolved config and the data table."""
    import mlflow
    from trackers import mlflow_run, wandb_config, wandb_history, wandb_records

    from sparse_ray.worker.callbacks import data_rows

    expected = [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in result["losses"]]
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs  # rank 0 only
    records = wandb_records(runs[0])
    history = wandb_history(records)
    assert [(h["train/global_step"], h["train/loss"]) for h in history if "train/loss" in h] == expected
    assert wandb_config(records)["sparse_ray"] == result["config"]
    columns, rows = data_rows(result["data"])
    (table_file,) = runs[0].parent.glob("files/media/table/sparse_ray/data_*.table.json")
    table = json.loads(table_file.read_text())
    assert (table["columns"], table["data"]) == (columns, rows)
    client, run_ = mlflow_run(f"sqlite:///{out / 'mlflow.db'}")
    logged = [(m.step, pytest.approx(m.value, rel=1e-6)) for m in client.get_metric_history(run_.info.run_id, "loss")]
    assert logged == expected
    assert run_.info.artifact_uri.startswith(str(out / "mlartifacts"))
    assert mlflow.artifacts.load_dict(f"{run_.info.artifact_uri}/sparse_ray/config.json") == result["config"]
    assert mlflow.artifacts.load_dict(f"{run_.info.artifact_uri}/sparse_ray/data.json") == {
        "columns": columns,
        "rows": rows,
    }


def test_offline_minilm_trains_and_beats_its_untrained_start(ray_cluster, tmp_path):
    result, out = run(
        tmp_path,
        "minilm",
        "cluster.zero=2",
        "data.max_samples=96",
        "train.batch_size=4",
        "train.learning_rate=5e-5",
        "model.max_seq_length=32",
        "train.save_steps=0",  # checkpoints are tested on the tiny model; MiniLM's cost ~270 MB each
        "model.split_identifiers=true",  # the recipe's code-aware tokenizer
    )
    from sentence_transformers import SparseEncoder

    from sparse_ray.config import resolve_base_model

    assert_trained(result, out, "splade", resolve_base_model("minilm"))
    ev = result["eval"]
    assert ev["trained"]["ndcg@10"] > ev["untrained"]["ndcg@10"]
    saved = SparseEncoder(str(out / "model"), device="cpu")
    assert saved.tokenizer.tokenize("getUserName") == ["get", "user", "name"]  # not get ##user ##name

"""End to end: 2 workers × 8 rows train the model 1 worker × 16 rows does, through Ray, the real
trainer, DDP and DeepSpeed ZeRO-2 (the objective's golden unit tests: ``tests/worker/test_objective.py``).

``data.batch_blocks`` makes every global batch hold the same rows whatever the worker count;
dropout is off so a step is a function of its batch. The per-step losses must agree to ~1e-4.
"""

from __future__ import annotations

import pytest

from sparse_ray.config import load_config
from sparse_ray.driver.launch import train

pytestmark = pytest.mark.slow


def _run(
    tmp_path, base: str, workers: int, zero: int, scope: str = "global", fused: bool = True, mini: int = 0
) -> dict:
    cfg = load_config(
        "quick_test",
        [
            "data.path=sample",
            f"model.base={base}",
            f"output={tmp_path / f'w{workers}-z{zero}-{scope}-{fused}'}",
            f"cluster.workers={workers}",
            f"cluster.zero={zero}",
            f"train.batch_size={16 // workers}",
            "data.max_samples=160",
            "data.eval_queries=0",
            "data.shuffle_buffer=0",
            "data.dedup_batches=false",
            "data.batch_blocks=true",
            "model.dropout=0",
            "model.max_seq_length=32",
            "train.logging_steps=1",
            "train.save_steps=0",
            "train.learning_rate=2e-4",
            "train.query_regularizer_weight=5e-2",
            "train.document_regularizer_weight=5e-2",
            f"train.regularizer_scope={scope}",
            f"model.fused_head={str(fused).lower()}",
            f"train.mini_batch_size={mini}",
        ],
    )
    return train(cfg)


@pytest.fixture(scope="module")
def one_worker(ray_cluster, tiny_base, tmp_path_factory) -> dict:
    return _run(tmp_path_factory.mktemp("one"), tiny_base, workers=1, zero=0)


@pytest.mark.parametrize(("zero", "mini"), [(0, 0), (2, 0), (0, 3)])
def test_two_workers_take_the_steps_one_worker_takes(one_worker, ray_cluster, tiny_base, tmp_path, zero, mini):
    """Also with GradCache (mini-batches of 3 texts under DDP): the same steps as the plain objective."""
    two = _run(tmp_path, tiny_base, workers=2, zero=zero, mini=mini)
    assert two["train"]["fused_head_per_rank"] == [True, True]
    one_losses = [e["loss"] for e in one_worker["losses"]]
    two_losses = [e["loss"] for e in two["losses"]]
    assert len(one_losses) == len(two_losses) == 10
    assert max(abs(a - b) for a, b in zip(one_losses, two_losses, strict=True)) < 1e-4, (one_losses, two_losses)
    # ten different steps (new rows, a moving model and a ramping regulariser), not one step ten times
    assert len({round(x, 4) for x in one_losses}) == 10
    assert two["train"]["rows_per_rank"] == [80, 80]


def test_zero3_with_the_fused_head_takes_the_steps_one_worker_takes(one_worker, ray_cluster, tiny_base, tmp_path):
    """ZeRO-3 partitions the (tied) decoder weight the fused head reads outside the decoder's forward;
    DeepSpeed gathers it on attribute access (the head was switched off under ZeRO-3 until this test)."""
    three = _run(tmp_path, tiny_base, workers=2, zero=3)
    assert three["train"]["fused_head_per_rank"] == [True, True]
    one_losses = [e["loss"] for e in one_worker["losses"]]
    three_losses = [e["loss"] for e in three["losses"]]
    assert max(abs(a - b) for a, b in zip(one_losses, three_losses, strict=True)) < 1e-4, (one_losses, three_losses)
    from sentence_transformers import SparseEncoder

    saved = SparseEncoder(str(tmp_path / "w2-z3-global-True" / "model"), device="cpu").state_dict()
    assert saved and all(t.numel() > 0 for t in saved.values()), "empty tensors: the ZeRO-3 save trap"


def test_the_fused_head_takes_the_steps_the_stock_head_takes(one_worker, ray_cluster, tiny_base, tmp_path):
    stock = _run(tmp_path, tiny_base, workers=1, zero=0, fused=False)
    fused_losses = [e["loss"] for e in one_worker["losses"]]
    stock_losses = [e["loss"] for e in stock["losses"]]
    assert max(abs(a - b) for a, b in zip(fused_losses, stock_losses, strict=True)) < 1e-4

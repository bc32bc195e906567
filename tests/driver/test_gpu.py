"""GPU path: 2 workers, one GPU each, bf16, ZeRO-2, NCCL. Skipped where no CUDA device exists."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs; this machine has fewer"),
]


def test_two_gpu_workers_bf16_zero2(ray_cluster, tiny_base, tmp_path):
    from test_train import assert_trained, run

    result, out = run(tmp_path, tiny_base, "cluster.zero=2", "cluster.gpus_per_worker=1", "cluster.bf16=true")
    assert_trained(result, out, "splade", tiny_base)

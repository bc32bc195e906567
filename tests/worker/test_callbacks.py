"""The progress line of rank 0: bar, rate, time left, GPU status."""

from __future__ import annotations

import pytest

from sparse_ray.worker.callbacks import bar, gpu_status, progress_line


def test_progress_line_has_a_bar_rate_eta_and_gpu_status_when_given():
    line = progress_line(12, 40, {"loss": 0.7123, "epoch": 0.3}, 3.94, 109.0, "")
    assert line == "step 12/40 ━━━━━━────────────── 30%  loss 0.7123  3.9 samples/s  eta 1m49s"
    gpu = progress_line(40, 40, {"loss": 0.5}, 100.0, 0.0, "gpu 87% util, 41.2/139 GiB peak")
    assert gpu.endswith("━" * 20 + " 100%  loss 0.5  100.0 samples/s  eta 0m00s  gpu 87% util, 41.2/139 GiB peak")


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.0, "─" * 20), (0.525, "━" * 10 + "╸" + "─" * 9), (1.2, "━" * 20)]
)
def test_bar_is_always_twenty_cells(fraction, expected):
    assert bar(fraction) == expected


def test_gpu_status_is_empty_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_status() == ""

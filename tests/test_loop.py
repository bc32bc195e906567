"""Worker-side helpers of the train loop that need no cluster: progress line, early pipeline start.

The real pipeline start is exercised by every training test; here the hand-over between the
background thread and the main thread is checked on a stand-in shard with known batches.
"""

from __future__ import annotations

import pytest

from sparse_ray import loop


def test_progress_line_has_a_bar_rate_eta_and_gpu_status_when_given():
    line = loop.progress_line(12, 40, {"loss": 0.7123, "epoch": 0.3}, 3.94, 109.0, "")
    assert line == "step 12/40 ━━━━━━────────────── 30%  loss 0.7123  3.9 samples/s  eta 1m49s"
    gpu = loop.progress_line(40, 40, {"loss": 0.5}, 100.0, 0.0, "gpu 87% util, 41.2/139 GiB peak")
    assert gpu.endswith("━" * 20 + " 100%  loss 0.5  100.0 samples/s  eta 0m00s  gpu 87% util, 41.2/139 GiB peak")


@pytest.mark.parametrize(("fraction", "bar"), [(0.0, "─" * 20), (0.525, "━" * 10 + "╸" + "─" * 9), (1.2, "━" * 20)])
def test_bar_is_always_twenty_cells(fraction, bar):
    assert loop._bar(fraction) == bar


def test_gpu_status_is_empty_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert loop._gpu_status() == ""


class _Shard:
    """Stands in for a Ray Data shard: ``iter_batches`` yields the epoch's batches, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls = fail, 0

    def iter_batches(self, **kw):
        self.calls += 1
        if self.fail:
            raise RuntimeError("read task failed")
        return iter([f"seed{kw['local_shuffle_seed']}-b{i}" for i in range(3)])


@pytest.fixture
def shards(monkeypatch):
    monkeypatch.setattr(loop, "_SHARD", {"python": _Shard(), "go": _Shard(fail=True)})
    monkeypatch.setattr(loop, "_EARLY", {})
    monkeypatch.setattr(loop, "_FED", loop.Counter(epochs=2))
    return loop._SHARD


def test_started_pipeline_is_handed_over_whole_for_its_epoch_only(shards):
    loop._start_pipelines(buffer=8, seed=10)
    # the first batch was pulled in the background; the main thread sees every batch, in order
    assert list(loop._epoch_batches("python", 2, 8, 10)) == ["seed12-b0", "seed12-b1", "seed12-b2"]
    assert shards["python"].calls == 1
    # a later epoch starts its own pipeline
    assert list(loop._epoch_batches("python", 3, 8, 10))[0] == "seed13-b0"
    assert shards["python"].calls == 2
    # a failure in the background thread surfaces where the rows are asked for
    with pytest.raises(RuntimeError, match="read task failed"):
        loop._epoch_batches("go", 2, 8, 10)


def test_pipeline_started_for_another_epoch_is_not_used(shards):
    loop._start_pipelines(buffer=8, seed=10)
    assert list(loop._epoch_batches("python", 3, 8, 10)) == ["seed13-b0", "seed13-b1", "seed13-b2"]
    assert "python" not in loop._EARLY

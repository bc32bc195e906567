"""The benchmark harness: its arithmetic exactly, and one tiny end-to-end pass (not a timed test)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from sparse_ray.tools.bench import rows_per_run, steady, steps_for, summarise


def test_steady_state_excludes_warmup_and_splits_the_step():
    steps = [
        {"t": 5.0, "tokens": 100, "data": 1.0, "tokenize": 0.5, "collective": 0.0},  # warm-up step
        {"t": 6.0, "tokens": 200, "data": 1.1, "tokenize": 0.6, "collective": 0.2},
        {"t": 7.0, "tokens": 300, "data": 1.2, "tokenize": 0.7, "collective": 0.4},
        {"t": 8.0, "tokens": 400, "data": 1.3, "tokenize": 0.8, "collective": 0.6},
    ]
    s = steady(steps, warmup=1, global_batch=16)
    assert s["step_s"] == pytest.approx(1.0) and s["samples_per_s"] == pytest.approx(16.0)
    assert s["tokens_per_s"] == pytest.approx(100.0)
    assert s["data_s_per_step"] == pytest.approx(0.1) and s["collective_s_per_step"] == pytest.approx(0.2)
    assert s["compute_s_per_step"] == pytest.approx(1.0 - 0.1 - 0.1 - 0.2)
    with pytest.raises(ValueError, match="need more than"):
        steady(steps[:2], warmup=1, global_batch=16)


def test_every_scenario_trains_on_the_same_rows_and_leaves_out_the_same_warmup_rows():
    args = SimpleNamespace(steps=12, warmup=3, batch=8)
    assert rows_per_run(args) == 12 * 8 * 2
    for workers in (1, 2):
        steps, warmup = steps_for(args, workers)
        assert steps * args.batch * workers == rows_per_run(args)
        assert warmup * args.batch * workers == 3 * 8 * 2


def test_ratios_are_taken_within_each_repeat():
    runs = {
        "plain": [{"samples_per_s": 10.0}, {"samples_per_s": 20.0}],
        "w1_zero2": [{"samples_per_s": 9.0}, {"samples_per_s": 19.0}],
        "w2_zero2": [{"samples_per_s": 16.2}, {"samples_per_s": 30.4}],
        "data": [{"rows_per_s": 900.0}, {"rows_per_s": 1900.0}],
        "w1_zero2_stock": [{"samples_per_s": 6.0}, {"samples_per_s": 9.5}],
        "plain_pair": [{"samples_per_s": 19.0, "spent_per_rank": []}, {"samples_per_s": 38.0, "spent_per_rank": []}],
    }
    out = summarise(runs)
    assert out["pair_vs_plain"]["max"] == pytest.approx(0.95)  # two at once over twice one alone
    # scaling 0.9 and 0.8 against ceilings 0.95 and 0.95
    assert out["scaling_vs_ceiling"]["min"] == pytest.approx(0.8 / 0.95)
    assert "spent_per_rank" not in out["plain_pair"]  # per-rank breakdowns are kept, not summarised
    assert out["fused_vs_stock_w1_zero2"]["min"] == pytest.approx(1.5) and out["fused_vs_stock_w1_zero2"]["max"] == 2
    assert out["w1_zero2_vs_plain"]["min"] == pytest.approx(0.9) and out["w1_zero2_vs_plain"]["max"] == pytest.approx(
        0.95
    )
    assert out["scaling_2_vs_1"]["median"] == pytest.approx((0.9 + 0.8) / 2)
    assert out["data_headroom"]["min"] == pytest.approx(100.0)
    # the printed table carries every ratio, the share of the ceiling included
    from rich.console import Console

    from sparse_ray.console import bench_table

    printed = Console(width=200, record=True)
    printed.print(bench_table({"machine": {"gpu": None}, "summary": out}))
    text = printed.export_text()
    assert re.search(r"scaling_vs_ceiling\s+│\s+0\.895 \[0\.842, 0\.947\]", text), text


@pytest.mark.slow
def test_harness_runs_end_to_end(ray_cluster, tiny_base, tmp_path):
    from sparse_ray.tools.bench import bench

    args = SimpleNamespace(
        base_model=tiny_base,
        repeats=1,
        steps=5,
        warmup=1,
        batch=8,
        seq=32,
        gpus_per_worker=0,
        bf16=False,
        scenarios=["plain", "plain_pair", "w1_zero2", "w1_zero2_stock", "data"],
        out=str(tmp_path),
        argv=["--quick"],
    )
    result = bench(args)
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert written["summary"] == json.loads(json.dumps(result["summary"]))
    assert written["summary"]["w1_zero2_vs_plain"]["median"] > 0
    assert written["runs"]["w1_zero2"][0]["startup_s"] > 0 and written["runs"]["data"][0]["rows"] > 0
    assert written["summary"]["fused_vs_stock_w1_zero2"]["median"] > 0
    assert written["runs"]["w1_zero2_stock"][0]["peak_rss_mb"] > 0
    assert written["summary"]["pair_vs_plain"]["median"] > 0
    # where each rank's collective seconds went, by call (the whole run, per rank)
    assert set(written["runs"]["w1_zero2"][0]["spent_per_rank"][0]) >= {"data", "tokenize", "collective"}


def test_bench_data_generates_readable_shards_and_summarises_memory_ratios(tmp_path):
    from sparse_ray.data.cornstack import RowRules
    from sparse_ray.tools.bench_data import generate, read_one_shard, summarise

    shards = generate(250, tmp_path / "rows", negatives=3)
    assert len(shards) == 1
    # one read task's work, done here: every generated row is valid CornStack
    read = read_one_shard(str(shards[0]), RowRules("python", 3, 0.0, 10**6, 10**6))
    assert read["rows"] == 250 and read["rows_per_s"] > 0 and read["peak_uss_mb"] > 0

    def run(count_rate: float, uss: float) -> dict:
        consumer = {"rows_per_s": 100.0, "peak_uss_mb": uss, "peak_rss_mb": 2 * uss}
        return {
            "read_task": {"rows_per_s": 1000.0, "peak_uss_mb": 50.0, "peak_rss_mb": 60.0},
            "count_pass_rows_per_s": count_rate,
            "consumers": [consumer, consumer | {"rows_per_s": 80.0}],
            "driver": {"peak_uss_mb": uss, "peak_rss_mb": 2 * uss},
        }

    out = summarise({"100": [run(1, 200), run(3, 300), run(2, 100)], "1000": [run(5, 220)] * 3}, consume=10.0)
    small = out["per_size"]["100"]
    assert small["count_pass_rows_per_s"] == 2 and small["driver_peak_uss_mb"] == 200
    assert small["consumer_rows_per_s"] == 80.0  # the slower consumer
    assert small["headroom_one_read_task"] == 100.0
    assert out["memory_ratio_1000_vs_100"]["driver_uss"] == pytest.approx(1.1)

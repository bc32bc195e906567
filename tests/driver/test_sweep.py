"""`sparse-ray sweep`: trials from grids and seeded draws, the Pareto front and its knee, and a
real Ray Tune sweep of tiny-model training runs on the shared local cluster (ASHA, 2 at a time)."""

from __future__ import annotations

import json

import pytest

from sparse_ray.cli import main
from sparse_ray.driver import sweep
from sparse_ray.errors import UserError
from sparse_ray.tools.sweep import pareto, recommend


def test_trials_cross_the_grid_and_draw_the_same_samples_every_time():
    spec = sweep.SweepSpec("quick_test", (), grid=sweep.parse_grid(["a.x=1,2", "a.y=3"]))
    assert sweep.trials(spec) == [{"a.x": "1", "a.y": "3"}, {"a.x": "2", "a.y": "3"}]
    drawn = sweep.SweepSpec("quick_test", (), random=sweep.parse_random(["a.z=loguniform(1e-6,1e-3)"]), samples=5)
    first, again = sweep.trials(drawn), sweep.trials(drawn)
    assert first == again and len(first) == 5 and all(1e-6 <= float(t["a.z"]) <= 1e-3 for t in first)
    assert len({sweep.trial_id(t) for t in first}) == 5


@pytest.mark.parametrize(
    ("grid", "rand", "samples", "message"),
    [
        (["a.x"], [], 0, "write KEY=V1,V2"),
        ([], ["a.x=normal(0,1)"], 3, "loguniform"),
        ([], ["a.x=loguniform(0,1)"], 3, "LOW < HIGH"),
        ([], ["a.x=uniform(1,1e-3)"], 3, "LOW < HIGH"),
        ([], ["a.x=uniform(0,1)"], 0, "needs --samples"),
        ([], [], 0, "needs --grid"),
    ],
)
def test_bad_sweep_specs_are_one_line_errors(grid, rand, samples, message):
    with pytest.raises(UserError, match=message):
        spec = sweep.SweepSpec("quick_test", (), grid=sweep.parse_grid(grid), samples=samples)
        sweep.trials(sweep.SweepSpec(**{**spec.__dict__, "random": sweep.parse_random(rand)}))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("train.nope=1,2", "unknown config key 'train.nope'"),
        ("train.learning_rate=1e-4,fast", "train.learning_rate must be a number, got 'fast'"),
        ("train.batch_size=8,0", "train.batch_size must be > 0, got 0"),
    ],
)
def test_a_bad_trial_config_is_one_line_before_ray_starts(grid, message, tmp_path, capsys):
    """Each trial's config is built and validated up front: one line naming the trial, no sweep of failures."""
    argv = ["sweep", "--preset", "quick_test", "--data", "sample", "--grid", grid, "--output", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: trial ") and message in err, err
    assert not (tmp_path / "s").exists()


def _row(i: int, ndcg: float, flops: float, state: str = "finished") -> dict:
    return {"id": f"t{i}", "params": {}, "state": state, "dir": "-", "ndcg@10": ndcg, "avg_flops": flops}


def test_pareto_front_budget_and_knee():
    rows = [_row(0, 0.50, 1.0), _row(1, 0.70, 2.0), _row(2, 0.60, 3.0), _row(3, 0.74, 8.0), _row(4, 0.9, 1, "stopped")]
    assert [r["id"] for r in pareto(rows)] == ["t0", "t1", "t3"]  # t2 is beaten by t1; stopped trials are out
    assert recommend(rows, flops_budget=2.5)[0]["id"] == "t1"
    assert recommend(rows, flops_budget=0.5)[0]["id"] == "t0"  # nothing fits: the cheapest
    assert recommend(rows, None)[0]["id"] == "t1"  # the knee: most nDCG for little FLOPS


@pytest.mark.slow
def test_a_sweep_runs_trials_in_tune_stops_some_early_and_resumes(
    ray_cluster, tiny_base, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative paths mean the caller's directory, not the Tune trial's
    out = tmp_path / "sweep"
    argv = [
        "sweep", "--preset", "quick_test", "--language", "python", "--data", "sample", "--base-model", tiny_base,
        "--set", "data.max_samples=96", "--set", "data.eval_queries=30", "--set", "train.batch_size=8",
        "--set", "train.eval_steps=2", "--set", "train.save_steps=0", "--set", "train.logging_steps=2",
        "--set", "train.learning_rate=1e-3", "--set", "model.max_seq_length=32",
        "--grid", "train.document_regularizer_weight=0,1000", "--grid", "train.query_regularizer_weight=0,1000",
        "--max-concurrent", "2", "--output", "sweep",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "sweep.json").read_text())
    states = [t["state"] for t in summary["trials"]]
    assert len(states) == 4 and "stopped" in states and "finished" in states, states
    assert summary["submitted"] == 4 and summary["counts"]["failed"] == 0
    finished = [t for t in summary["trials"] if t["state"] == "finished"]
    assert all(t["ndcg@10"] is not None and t["avg_flops"] is not None for t in finished)
    assert summary["recommended"]["id"] in {t["id"] for t in finished}
    assert (out / "best" / "model" / "modules.json").is_file() and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "sweep.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("id,")
    assert summary["trials"] == sorted(summary["trials"], key=lambda t: -(t.get("ndcg@10") or 0))
    capsys.readouterr()
    assert main(argv) == 0  # again: nothing is run
    assert json.loads((out / "sweep.json").read_text())["submitted"] == 0
    assert "0 run now" in capsys.readouterr().out

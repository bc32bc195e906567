"""`sparse-ray bench-search` end to end on a small corpus (tiny model): the JSON it writes is
consistent with the library's own scorers on the same corpus and queries."""

from __future__ import annotations

import json

import pytest
from conftest import sample_rows, write_shard

from sparse_ray import evaluate as ev
from sparse_ray.cli import main
from sparse_ray.tools import bench_search as bs
from sparse_ray.tools.build import code_tokens

pytestmark = pytest.mark.slow


def test_distractors_leave_out_the_unseen_libraries_and_texts(tmp_path):
    roots = bs.distractor_roots()
    assert roots and not {r.name for r in roots} & set(bs.UNSEEN_LIBRARIES)
    first = bs.distractors(30, roots, set())
    again = bs.distractors(30, roots, {first[0]["text"]})
    assert len(first) == 30 and first[0]["text"] not in {i["text"] for i in again}
    assert len({i["doc_id"] for i in first}) == 30


def test_bench_search_writes_results_consistent_with_the_scorers(ray_cluster, tiny_base, tmp_path):
    from sparse_ray.model import build_model

    model = tmp_path / "model"
    build_model("splade", tiny_base, 48).save(str(model))
    unseen = tmp_path / "unseen" / "python"
    write_shard(unseen / "shard-00000.jsonl.gz", [json.dumps(r) for r in sample_rows(60)])
    argv = ["bench-search", str(model), "--distractors", "40", "--unseen", str(unseen.parent), "--dense", "none"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    result = json.loads(next((tmp_path / "out").glob("*-search.json")).read_text())
    assert result["corpus"]["distractors"] == 40 and result["corpus"]["queries"] == 60
    assert result["encode"]["documents"] == result["corpus"]["unseen"] + 40
    assert len(result["seismic_grid"]) == len(bs.GRID_CUTS) * len(bs.GRID_HEAPS)
    grid = result["seismic_grid"]
    assert all(0 <= r["recall@10_vs_exact"] <= 1 and r["p99_us"] >= r["p50_us"] > 0 for r in grid)
    best, good = result["seismic_best"], [r for r in grid if r["recall@10_vs_exact"] >= 0.99]
    assert best["p50_us"] == min(r["p50_us"] for r in good or grid)
    # BM25 quality is the evaluator's own on the same corpus and queries
    rows = ev.read_rows(str(unseen.parent), "python")
    task = ev.IRTask.from_rows(rows)
    items = bs.distractors(40, bs.distractor_roots(), set(task.corpus.values()))
    full = ev.IRTask(task.queries, {**task.corpus, **{i["doc_id"]: i["text"] for i in items}}, task.relevant)
    assert result["bm25_code"]["ndcg@10"] == pytest.approx(ev.bm25_ir(full, code_tokens)["ndcg@10"], abs=1e-9)

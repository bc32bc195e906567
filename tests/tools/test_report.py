"""`sparse-ray evaluate` and `explain`: metric code, BM25 baselines, the report schema, real PNG plots."""

from __future__ import annotations

import json
import math
import time

import pytest
from conftest import own_lines

from sparse_ray import evaluate as ev
from sparse_ray.cli import main
from sparse_ray.errors import UserError
from sparse_ray.tools.build import code_tokens
from sparse_ray.tools.report import SCHEMA_PATH, nanobeir, parse_types, validate_report

ROWS = [
    {"anchor": "open the config file", "positive": "def open_config(path): return open(path)", "negative_1": "x"},
    {"anchor": "sort a list of users", "positive": "def sort_users(users): return sorted(users)", "negative_1": "y"},
    {
        "anchor": "parse an http header",
        "positive": "def parse_http_header(raw): return raw.split(':')",
        "negative_1": "z",
    },
]


def test_evaluator_metric_code_matches_hand_computed_ranking():
    task = ev.IRTask.from_rows(ROWS)
    (rel0,), (rel1,), _ = task.relevant.values()
    other = next(d for d in task.corpus if d not in {rel0, rel1})
    # q0 finds its document first, q1 second, q2 never
    results = [
        [{"corpus_id": rel0, "score": 3.0}, {"corpus_id": other, "score": 1.0}],
        [{"corpus_id": other, "score": 2.0}, {"corpus_id": rel1, "score": 1.5}],
        [{"corpus_id": other, "score": 2.0}],
    ]
    got = ev._normalise(ev.sparse_evaluator(task).compute_metrics(results))
    # by hand: nDCG = (1/log2(2) + 1/log2(3) + 0) / 3, MRR = (1 + 1/2 + 0) / 3
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["recall@10"] == pytest.approx(2 / 3) and got["map@100"] == pytest.approx(0.5)


def test_bm25_baselines_are_deterministic_and_identifier_aware():
    task = ev.IRTask.from_rows(ROWS)
    first = ev.bm25_ir(task, code_tokens)
    assert first == ev.bm25_ir(task, code_tokens)
    assert first["ndcg@10"] == 1.0  # "http header" only matches parse_http_header once identifiers are split
    assert ev.bm25_ir(task, ev.plain_tokens)["ndcg@10"] < 1.0


def test_eval_types():
    assert parse_types("all") == ["ir", "sparsity", "tokens", "performance"]
    assert parse_types("ir,tokens") == ["ir", "tokens"]
    with pytest.raises(UserError, match="unknown evaluation type 'speed'"):
        parse_types("ir,speed")


def test_nanobeir_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(UserError, match="nanobeir needs the Hugging Face hub"):
        nanobeir(model=None)
    assert time.monotonic() - start < 15


def test_evaluate_cli_writes_a_valid_report_and_real_plots(tiny_splade, tmp_path, capsys):
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    rc = main(
        ["evaluate", tiny_splade, "--eval-type", "all", "--data", "sample", "--limit", "30"]
        + ["--output", str(report_path), "--plots", str(plots), "--batch-size", "16"]
    )
    assert rc == 0
    report = json.loads(report_path.read_text())
    validate_report(report)
    assert set(report["metrics"]) == {"ir", "sparsity", "tokens", "performance"}
    assert {"bm25_code", "bm25_plain"} <= set(report["baselines"])
    assert report["data"]["queries"] == 30 and report["data"]["split"] == "all"
    assert (
        report["metrics"]["sparsity"]["query_active_dims"]["max"]
        >= report["metrics"]["sparsity"]["query_active_dims"]["mean"]
    )
    for png in report["plots"]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "bm25_code" in out and "nDCG@10" in out
    # the paired section ranks with the same systems: its per-query means are the evaluators' nDCG@10
    paired = report["paired"]
    assert paired["queries"] == 30 and set(paired["margins"]) == {"bm25_code", "bm25_plain"}
    for name, metrics in [("model", report["metrics"]["ir"]), *report["baselines"].items()]:
        assert paired["per_system"][name] == pytest.approx(metrics["ndcg@10"], abs=1e-6), name
    assert "paired bootstrap" in out
    assert json.loads(SCHEMA_PATH.read_text())["properties"]["schema_version"]["const"] == report["schema_version"]


def test_evaluate_compares_other_sparse_models_paired(tiny_splade, tiny_base, tmp_path, capsys, monkeypatch):
    from sparse_ray.model import build_model

    monkeypatch.chdir(tmp_path)
    other = "inference-free"  # a relative path: the name it has in the report and the tables
    build_model("inference_free_splade", tiny_base, 48).save(other)
    report_path = tmp_path / "report.json"
    argv = ["evaluate", tiny_splade, "--eval-type", "ir", "--data", "sample", "--limit", "30"]
    encoded = _count_query_encodes(monkeypatch)
    assert main([*argv, "--compare", tiny_splade, "--compare", other, "--output", str(report_path)]) == 0
    assert encoded == [30] * 3  # each model's queries once: the metrics and the paired section share them
    report = json.loads(report_path.read_text())
    validate_report(report)
    paired = report["paired"]
    assert {tiny_splade, other} <= set(report["baselines"]) and {tiny_splade, other} <= set(paired["margins"])
    for name in (tiny_splade, other):  # the same per-query ranking code as the model's own evaluator
        assert paired["per_system"][name] == pytest.approx(report["baselines"][name]["ndcg@10"], abs=1e-6)
    assert paired["margins"][tiny_splade] == {"mean": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}  # itself
    margin = paired["per_system"]["model"] - paired["per_system"][other]
    assert paired["margins"][other]["mean"] == pytest.approx(margin, abs=1e-9)
    assert other in capsys.readouterr().out
    assert main([*argv, "--compare", "dense"]) == 2
    assert "--compare 'dense': name taken" in capsys.readouterr().err


def test_evaluate_reads_documents_in_the_windows_saved_with_the_model(tiny_splade, tmp_path):
    import shutil

    from sparse_ray import windows

    windowed = str(tmp_path / "windowed")
    shutil.copytree(tiny_splade, windowed)
    windows.write(windowed, windows.DocumentWindows(3, 0.5))
    reports = {}
    for name, path in (("stock", tiny_splade), ("windowed", windowed)):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", path, "--eval-type", "ir", "--data", "sample", "--limit", "30", "--output", str(out)]
        assert main(argv) == 0
        reports[name] = json.loads(out.read_text())
        validate_report(reports[name])
    assert reports["stock"]["document_windows"] == {"count": 1, "tail_weight": 0.3}
    assert reports["windowed"]["document_windows"] == {"count": 3, "tail_weight": 0.5}
    # the max over windows keeps every term of the first window and adds the tails' terms
    dims = {name: r["metrics"]["ir"]["corpus_active_dims"] for name, r in reports.items()}
    assert dims["windowed"] > dims["stock"], dims


def test_evaluate_without_run_json_or_data_is_a_clear_error(tiny_splade, capsys):
    assert main(["evaluate", tiny_splade]) == 2
    assert "has no run.json to find its hold-out; pass --data PATH" in capsys.readouterr().err


def test_explain_shows_tokens_of_the_text_for_a_lexical_start():
    """The bundled MiniLM with the lexical head (no random head): its top tokens come from the text."""
    import transformers

    from sparse_ray.config import resolve_base_model
    from sparse_ray.model import build_model

    transformers.set_seed(0)
    model = build_model("splade", resolve_base_model("minilm"), 64)
    text = "parse the yaml configuration file and return a dictionary"
    top = [tok for tok, _ in ev.explain(model, text, k=8)]
    own = set(model.tokenizer.tokenize(text))
    assert len(own & set(top)) >= 4, (top, own)


def test_a_nanobeir_report_validates_and_a_bad_one_is_one_line(tiny_splade, monkeypatch):
    """NanoBEIR needs the hub: its evaluator is replaced at that boundary by metrics of its shape."""
    from sparse_ray.tools import report as rp

    shaped = {
        "NanoMSMARCO_dot_ndcg@10": 0.41,
        "NanoNFCorpus_dot_ndcg@10": 0.22,
        "NanoBEIR_mean_dot_ndcg@10": 0.315,
        "NanoBEIR_mean_query_active_dims": 23.0,
    }
    monkeypatch.setattr(rp, "nanobeir", lambda model: shaped)
    report = rp.build_report(tiny_splade, ["nanobeir"], [], {"path": "hub", "language": "python", "split": "all"})
    validate_report(report)
    assert report["metrics"]["nanobeir"] == shaped
    with pytest.raises(UserError, match="report does not match report.schema.json at metrics/nanobeir/x"):
        validate_report({**report, "metrics": {"nanobeir": {"x": "high"}}})


def test_evaluate_and_explain_name_a_bad_model_in_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--data", "sample", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "is neither a SparseEncoder directory nor a run directory" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path), "--data", "sample", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err  # not "every row", which looked like a hang
    assert main(["explain", str(tmp_path / "no" / "such" / "model"), "text"]) == 2
    err = capsys.readouterr().err
    assert "no/such/model does not exist" in err and "Repo id" not in err and len(own_lines(err)) == 1


def test_a_run_trained_from_the_hub_evaluates_on_its_own_hold_out(tiny_splade, tmp_path, capsys, monkeypatch):
    """Its run.json has no data path: the hold-out is the hub's shards (offline: one clear line)."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    shutil.copytree(tiny_splade, run / "model")
    (run / "run.json").write_text(json.dumps({"config": {"data": {"path": None, "holdout_fraction": 0.1}}}))
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Hugging Face hub" in err and "pass --data" in err and "'hf'" not in err


def _count_query_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of texts of every SparseEncoder.encode_query call from now on."""
    from sentence_transformers import SparseEncoder

    calls: list[int] = []
    original = SparseEncoder.encode_query

    def encode_query(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(SparseEncoder, "encode_query", encode_query)
    return calls


def test_one_encoding_gives_the_sentence_transformers_evaluators_numbers(tiny_splade):
    from sparse_ray.tools.report import load_model

    model = load_model(tiny_splade)
    task = ev.IRTask.from_rows(ev.read_rows("sample", "python", limit=40))
    got = ev.model_ir(model, task)
    stock = ev.sparse_evaluator(task)
    want = ev._normalise(stock(model))
    assert set(want) == set(ev.METRIC_KEYS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    for key in ("query_active_dims", "corpus_active_dims", "avg_flops"):
        assert got[key] == pytest.approx(stock.sparsity_stats[key], rel=1e-6), key


def test_evaluate_encodes_through_the_fused_head_with_the_stock_vectors(tiny_splade):
    from sentence_transformers import SparseEncoder

    from sparse_ray.tools.report import load_model

    fused, stock = load_model(tiny_splade), SparseEncoder(tiny_splade, device="cpu")
    assert "forward" in vars(fused[0]) and "forward" not in vars(stock[0])  # the fused forward is on
    texts = [r["positive"] for r in ROWS] + [r["anchor"] for r in ROWS]
    got = fused.encode_document(texts, convert_to_sparse_tensor=False)
    want = stock.encode_document(texts, convert_to_sparse_tensor=False)
    assert float((got - want).abs().max()) <= 1e-5


def test_ndcg_per_query_and_the_paired_bootstrap():
    import numpy as np

    from sparse_ray.tools.paired import bootstrap, ndcg_at_k

    assert ndcg_at_k(["a", "b"], {"a"}) == 1.0
    assert ndcg_at_k(["b", "a"], {"a"}) == pytest.approx(1 / np.log2(3))
    assert ndcg_at_k(["b"] * 10 + ["a"], {"a"}) == 0.0  # beyond the top 10
    rng = np.random.default_rng(1)
    base = rng.random(400)
    better = bootstrap(base + 0.05, base)
    assert better["mean"] == pytest.approx(0.05) and better["p_value"] == 0.0
    noise = bootstrap(base + rng.normal(0, 0.2, 400), base)
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and 0.05 < noise["p_value"] < 0.95

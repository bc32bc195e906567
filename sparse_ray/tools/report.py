"""``sparse-ray evaluate``: the evaluation report (driver side), its schema, and its plots.

The report's schema is ``report.schema.json`` beside this file; every report is validated against
it before it is written. Evaluation types: ir, sparsity, tokens, performance, nanobeir, custom, all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparse_ray import evaluate as ev
from sparse_ray.data.sources import language_root
from sparse_ray.errors import UserError
from sparse_ray.offline import hub_unreachable, load_kwargs, model_unavailable
from sparse_ray.rundir import RUN_JSON, versions
from sparse_ray.rundir import model_path as resolve_model
from sparse_ray.tools import paired
from sparse_ray.tools.build import code_tokens

SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"
EVAL_TYPES = ("ir", "sparsity", "tokens", "performance", "nanobeir", "custom")


def parse_types(spec: str) -> list[str]:
    """``ir,sparsity`` or ``all`` → the list of evaluation types; a clear error for unknown ones."""
    types = [t.strip() for t in spec.split(",") if t.strip()]
    if types == ["all"]:  # every type that works offline; nanobeir and custom are asked for by name
        return [t for t in EVAL_TYPES if t not in ("custom", "nanobeir")]
    unknown = [t for t in types if t not in EVAL_TYPES]
    if unknown or not types:
        raise UserError(
            f"unknown evaluation type {', '.join(unknown) or spec!r}; choose from {', '.join(EVAL_TYPES)}, all"
        )
    return types


def run_config(model_path: str) -> dict[str, Any] | None:
    """The training run's config when ``run.json`` sits next to the model."""
    path = Path(model_path) / RUN_JSON
    return json.loads(path.read_text())["config"] if path.is_file() else None


def eval_rows(model_path: str, data: str | None, language: str, limit: int) -> tuple[list[dict], dict[str, Any]]:
    """Rows to evaluate on: ``data`` as a whole, or else the model's training hold-out."""
    if data is not None:
        rows = ev.read_rows(data, language, limit=limit)
        return rows, {"path": data, "language": language, "split": "all"}
    cfg = run_config(model_path)
    if cfg is None:
        raise UserError(f"{model_path} has no run.json to find its hold-out; pass --data PATH")
    path = cfg["data"]["path"]  # None: the run trained from the hub, whose shards the reader finds
    rows = ev.read_rows(path, language, limit=limit, holdout=cfg["data"]["holdout_fraction"])
    return rows, {
        "path": path or language_root(None, language, several=False),
        "language": language,
        "split": "holdout",
    }


def nanobeir(model: Any) -> dict[str, Any]:
    """SparseNanoBEIREvaluator; it needs the hub, so offline it fails at once with a clear message."""
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    reason = hub_unreachable()
    if reason:
        raise UserError(f"nanobeir needs the Hugging Face hub to download NanoBEIR ({reason})")
    try:
        evaluator = SparseNanoBEIREvaluator(dataset_names=["msmarco", "nfcorpus"], show_progress_bar=False)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"nanobeir needs the Hugging Face hub to download NanoBEIR ({detail})") from None
    return {k: float(v) for k, v in evaluator(model).items()}


def build_report(
    model_path: str,
    types: list[str],
    rows: list[dict],
    data_info: dict[str, Any],
    dense_baseline: str | None = None,
    batch_size: int = 32,
    compare: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the requested evaluations; returns the report (not yet validated or written).

    ``compare``: other SparseEncoders (run or model directories, hub ids), scored on the same
    queries as baselines named as given, and in the paired margins (e.g. a recipe against the last).
    """

    if not rows and set(types) - {"nanobeir"}:
        raise UserError(f"no valid rows to evaluate on in {data_info['path']}")
    check_compare(compare)
    model = load_model(model_path)
    others = {name: load_model(name) for name in compare}
    task = ev.IRTask.from_rows(rows)
    report: dict[str, Any] = {
        "schema_version": 1,
        "model": model_path,
        "document_windows": windows_of(model_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": run_config(model_path),
        "data": {**data_info, "queries": len(task.queries), "corpus": len(task.corpus)},
        "metrics": {},
        "baselines": {},
        "timings": {},
        "versions": versions(),
    }
    scored: dict[str, ev.Scored] = {}  # each model encoded once, whatever reads its scores
    for kind in types:
        start = time.perf_counter()
        if kind in ("ir", "custom"):
            scored = scored or score_systems(model, task, dense_baseline, batch_size, others)
            report["metrics"][kind] = ev.ir_metrics(task, scored["model"])
            report["baselines"]["bm25_code"] = ev.bm25_ir(task, code_tokens)
            report["baselines"]["bm25_plain"] = ev.bm25_ir(task, ev.plain_tokens)
            for name in [name for name in scored if name != "model"]:  # dense, then --compare, as given
                report["baselines"][name] = ev.ir_metrics(task, scored[name])
            report["paired"] = paired_section(task, scored)
        else:
            report["metrics"][kind] = _one(kind, model, task, rows, batch_size)
        report["timings"][kind] = time.perf_counter() - start
    return report


def windows_of(model_path: str) -> dict[str, Any] | None:
    """How the model at ``model_path`` reads long documents (None for a hub id)."""
    from sparse_ray.windows import read

    where = resolve_model(model_path)
    return dataclasses.asdict(read(where)) if os.path.isdir(where) else None


def score_systems(
    model: Any, task: ev.IRTask, dense_baseline: str | None, batch_size: int, others: dict[str, Any]
) -> dict[str, ev.Scored]:
    """The model, the dense baseline and every ``--compare`` model, each encoded once on ``task``."""
    scored = {"model": ev.score_sparse(model, task, batch_size)}
    if dense_baseline:
        scored["dense"] = ev.score_dense(dense_baseline, task, batch_size)
    scored.update({name: ev.score_sparse(other, task, batch_size) for name, other in others.items()})
    return scored


def check_compare(names: Sequence[str]) -> None:
    """``--compare`` names become baseline names: none may be a built-in system's or repeat."""
    taken = {"model", "bm25_code", "bm25_plain", "dense"}
    for name in names:
        if name in taken:
            raise UserError(f"--compare {name!r}: name taken (by a built-in system, or given twice)")
        taken.add(name)


def paired_section(task: ev.IRTask, scored: dict[str, ev.Scored]) -> dict[str, Any]:
    """Per-query nDCG@10 of the model and every baseline, and the model's margins with a paired
    bootstrap over queries (``tools/paired.py``), from the scores the metrics came from."""
    tops = {
        "model": paired.scored_top(scored["model"]),
        "bm25_code": paired.bm25_top(code_tokens),
        "bm25_plain": paired.bm25_top(ev.plain_tokens),
    }
    tops.update({name: paired.scored_top(s) for name, s in scored.items() if name != "model"})
    return paired.compare(task, {name: paired.per_query(task, top) for name, top in tops.items()}, "model")


def _one(kind: str, model: Any, task: ev.IRTask, rows: list[dict], batch_size: int) -> dict[str, Any]:
    if kind == "sparsity":
        return ev.sparsity(model, task, batch_size)
    if kind == "tokens":
        sample = rows[:3]
        return {
            "query_top": ev.top_tokens(model, list(task.queries.values()), query=True),
            "document_top": ev.top_tokens(model, list(task.corpus.values()), query=False),
            "examples": [{"text": r["anchor"], "tokens": ev.explain(model, r["anchor"], k=10)} for r in sample],
        }
    if kind == "performance":
        perf = ev.throughput(model, task, batch_size)
        perf["query_to_document_cost"] = perf["documents_per_second"] / max(perf["queries_per_second"], 1e-9)
        return perf
    assert kind == "nanobeir", kind
    return nanobeir(model)


def load_model(path: str) -> Any:
    """The SparseEncoder at a model or run directory, or a hub id, encoding through the fused SPLADE
    head where the model allows it (the same vectors within 1e-5, no batch × seq × vocab logits);
    one line when it cannot load."""
    from sentence_transformers import SparseEncoder

    from sparse_ray.fused_head import use_fused_head
    from sparse_ray.windows import use_saved_windows

    where = resolve_model(path)
    if os.path.exists(where) and not os.path.isfile(os.path.join(where, "modules.json")):
        raise UserError(f"{path} is neither a SparseEncoder directory nor a run directory with model/")
    why = model_unavailable(where)
    if why:
        raise UserError(f"model {why}")
    try:
        model = SparseEncoder(where, device=None, **load_kwargs(where))
    except Exception as exc:  # a hub id that does not resolve: a typo, no access
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"cannot load the model {path}: {detail}") from None
    use_fused_head(model)  # None or why not: either way the model encodes correctly
    use_saved_windows(model, where)
    return model


def validate_report(report: dict[str, Any]) -> None:
    """One line (exit 2) if the report does not match ``report.schema.json``: nothing is written."""
    import jsonschema

    as_written = json.loads(json.dumps(report))  # tuples become lists, as in the file
    try:
        jsonschema.validate(as_written, json.loads(SCHEMA_PATH.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the report"
        raise UserError(f"report does not match {SCHEMA_PATH.name} at {where}: {exc.message[:160]}") from None


def plot(report: dict[str, Any], model_path: str, out_dir: str, task: ev.IRTask | None = None) -> list[str]:
    """PNG plots: active-dimension histogram; training loss and hold-out sparsity from run.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if task is not None and task.queries:
        model = load_model(model_path)
        q = model.encode_query(list(task.queries.values()), convert_to_tensor=True).to_dense()
        d = model.encode_document(list(task.corpus.values()), convert_to_tensor=True).to_dense()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist((q != 0).sum(1).cpu().numpy(), bins=30, alpha=0.6, label="queries")
        ax.hist((d != 0).sum(1).cpu().numpy(), bins=30, alpha=0.6, label="documents")
        ax.set(xlabel="active dimensions", ylabel="texts", title="active dimensions per text")
        ax.legend()
        written.append(_save(fig, out / "active_dims.png"))
    run_json = Path(model_path) / RUN_JSON
    if run_json.is_file():
        run = json.loads(run_json.read_text())
        losses = run.get("losses", [])
        if losses:
            fig, ax = plt.subplots(figsize=(6, 4))
            for key in sorted({k for e in losses for k in e if k.endswith("loss")}):
                pts = [(e["step"], e[key]) for e in losses if key in e]
                ax.plot(*zip(*pts, strict=True), label=key)
            ax.set(xlabel="step", ylabel="loss", title="training loss", yscale="log")
            ax.legend(fontsize=7)
            written.append(_save(fig, out / "training_loss.png"))
        history = run.get("eval_history", [])
        if history:
            fig, ax = plt.subplots(figsize=(6, 4))
            steps = [e["step"] for e in history]
            ax.plot(steps, [e.get("query_active_dims", 0) for e in history], label="query active dims")
            ax.plot(steps, [e.get("corpus_active_dims", 0) for e in history], label="document active dims")
            ax.set(xlabel="step", ylabel="active dimensions", title="hold-out sparsity during training")
            ax.legend()
            written.append(_save(fig, out / "sparsity.png"))
    plt.close("all")
    return written


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)

"""``sparse-ray index``, ``search`` and ``export``: what the CLI runs for them.

``index`` loads the model once on the driver (a bad path fails here, before any actor starts),
streams the corpus through the encode job, then builds the index directory (``index.build``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from sparse_ray.errors import UserError
from sparse_ray.index import approximate, export
from sparse_ray.index.build import build, describe_model
from sparse_ray.index.search import Hit, Index


@dataclass(frozen=True)
class IndexRequest:
    """The ``sparse-ray index`` command line, typed."""

    model: str
    corpus: str
    language: str
    out: str
    vectors: str | None = None
    seismic: bool = True
    n_postings: int = approximate.BuildParams.n_postings
    summary_energy: float = approximate.BuildParams.summary_energy


def load_encoder(path: str) -> tuple[str, Any]:
    """(model directory, SparseEncoder) of a model or run directory; one line when it is neither."""
    from sparse_ray.model import load_sparse_encoder
    from sparse_ray.rundir import model_path

    where = model_path(path)
    if not os.path.isfile(os.path.join(where, "modules.json")):
        raise UserError(f"{path} is neither a SparseEncoder directory nor a run directory with model/")
    return where, load_sparse_encoder(where)


def source_items(language: str, root: str) -> list[dict[str, str]]:
    """Corpus records of every documented function under a source tree (the builder's extractors)."""
    from sparse_ray.tools import extract
    from sparse_ray.tools.build import source_files

    base = Path(root)
    try:
        files = source_files(language, [base])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    items = []
    for path in files:
        rel = str(path.relative_to(base)) if base.is_dir() else path.name
        try:
            found = list(extract.pairs(language, path.read_bytes()))
        except (OSError, UnicodeDecodeError):
            continue
        for n, (_, code) in enumerate(found, start=1):
            items.append({"doc_id": f"{rel}:{n}", "text": code, "language": language, "path": rel, "skip": ""})
    if not items:
        raise UserError(f"no documented {language} function under {root}")
    return items


def corpus(request: IndexRequest) -> Any:
    """The Ray Dataset of corpus records the request names (shards, or ``src:DIR``)."""
    from sparse_ray.data import sources
    from sparse_ray.driver import encode

    if request.corpus.startswith("src:"):
        return encode.items_dataset(source_items(request.language, request.corpus.removeprefix("src:")))
    source = sources.list_shards(
        sources.language_root(request.corpus, request.language, several=False), request.language
    )
    return encode.corpus_dataset(source.files, request.language, source.root)


def index(request: IndexRequest, job_options: dict[str, Any]) -> dict[str, Any]:
    """Encode (resumable) and build; returns the manifest."""
    from sparse_ray.driver import encode
    from sparse_ray.driver.quiet import quiet_ray

    model_dir, model = load_encoder(request.model)
    info = describe_model(model)
    vectors = request.vectors or str(Path(request.out) / "vectors")
    job = encode.EncodeJob(model=model_dir, vectors=vectors, **job_options)
    job.check()
    encode.connect(job)
    quiet_ray()
    stats = encode.run(job, corpus(request))
    params = approximate.BuildParams(n_postings=request.n_postings, summary_energy=request.summary_energy)
    params = params if request.seismic else None
    return build(request.out, model_dir, vectors, info, stats, params)


def index_table(manifest: dict[str, Any], out: str) -> Table:
    enc, seis = manifest["encode"], manifest["seismic"]
    table = Table(title=f"index {out}", header_style="bold", show_header=False)
    table.add_row(
        "documents", f"{manifest['documents']:,} (encoded now {enc['encoded_now']:,}, resumed {enc['resumed_from']:,})"
    )
    table.add_row("skipped lines", ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items()) or "none")
    table.add_row(
        "active dims / document",
        f"mean {manifest['document_active_dims']['mean']:.1f}, max {manifest['document_active_dims']['max']}",
    )
    if enc["docs_per_s"]:
        table.add_row(
            "encode", f"{enc['docs_per_s']:.1f} docs/s on {enc['workers']} replica(s), {enc['seconds']:.1f} s"
        )
    if seis:
        table.add_row("seismic", f"built in {seis['build_s']:.2f} s, {seis['bytes'] / 1e6:.1f} MB")
    table.add_row("search it", f'sparse-ray search {out} "a query"')
    return table


def open_index(path: str) -> Index:
    try:
        return Index.load(path)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def tune(idx: Index, query_cut: int | None, heap_factor: float | None) -> None:
    """Override the index's Seismic query knobs for this search."""
    from dataclasses import replace

    if query_cut is not None and query_cut < 1 or heap_factor is not None and not 0 < heap_factor <= 1:
        raise UserError("--query-cut must be ≥ 1 and --heap-factor in (0, 1]")
    changes = {k: v for k, v in {"query_cut": query_cut, "heap_factor": heap_factor}.items() if v is not None}
    idx.search_params = replace(idx.search_params, **changes)


def hits_table(idx: Index, query: str, hits: list[Hit], explain: bool, lines: int = 6) -> Table:
    table = Table(title=f"{query!r}", header_style="bold", show_lines=True)
    wheres = [hit.doc_id if hit.path in hit.doc_id else f"{hit.path} {hit.doc_id}" for hit in hits]
    # the document id is what a user copies: its column is never narrower than the longest id
    id_width = min(60, max((len(w.split(" ")[-1]) for w in wheres), default=0))
    for name in ("#", "score", "function"):
        table.add_column(name, justify="right" if name in ("#", "score") else "left", no_wrap=name != "function")
    table.add_column("matching tokens (query × document)" if explain else "where", min_width=id_width)
    vector = idx.encode_queries([query])[0] if explain else None
    for hit, where in zip(hits, wheres, strict=True):
        code = "\n".join(hit.text.splitlines()[:lines])
        if vector is not None:
            parts = [f"{t} {q:.2f}×{d:.2f}" for t, q, d in idx.explain(vector, hit)]
            where = f"{where}\n" + ", ".join(parts)
        table.add_row(str(hit.rank), f"{hit.score:.3f}", code, where)
    return table


def export_index(idx: Index, fmt: str, out: str, name: str) -> list[str]:
    """Write the export; returns the files written."""
    if fmt == "jsonl":
        export.jsonl(idx, out)
        written = [out]
    elif fmt == "opensearch":
        export.opensearch(idx, out, name)
        written = [str(Path(out) / "mapping.json"), str(Path(out) / "documents.ndjson")]
    else:
        raise UserError(f"unknown export format {fmt!r}; choose jsonl or opensearch")
    weights = export.query_tokens(idx.model)
    if weights is not None:
        import json

        target = Path(out).parent / "query_tokens.json" if fmt == "jsonl" else Path(out) / "query_tokens.json"
        names = {export.feature_name(t) if fmt == "opensearch" else t: w for t, w in weights.items()}
        target.write_text(json.dumps(names))
        written.append(str(target))
    return written

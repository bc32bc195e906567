"""``sparse-ray``: the command line.

    sparse-ray train --language python|python,go,rust|all --model-type splade --preset quick_test \\
        --workers 2 --zero 2 [--base-model minilm] [--data PATH|s3://...|sample] [--output DIR|s3://...] \\
        [--gpus-per-worker N] [--address RAY_ADDRESS] [--set section.key=value ...] [--dry-run] [--resume]
    sparse-ray data build --language rust --source DIR [DIR ...] --out DIR
    sparse-ray data mirror --language python --to s3://bucket/prefix [--from DIR|s3://...|hf://...]
    sparse-ray data inspect PATH [--language L]
    sparse-ray data score --teacher minilm --in sample|DIR|s3://... --out DIR|s3://... [--language L ...] [--mine N]
    sparse-ray evaluate MODEL --eval-type ir,sparsity,tokens,performance [--data PATH] [--output report.json]
    sparse-ray explain MODEL "text"
    sparse-ray index MODEL_OR_RUN --corpus PATH|sample|s3://...|src:DIR --language L --out INDEX [--workers N]
    sparse-ray search INDEX "query" [-k 10] [--explain] [--exact]
    sparse-ray export INDEX --format jsonl|opensearch --out PATH
    sparse-ray submit jobs/python.yaml --address http://HEAD:8265 [--follow]
    sparse-ray jobs list | status ID | logs ID [--follow] | stop ID
    sparse-ray bench [--base-model minilm] [--repeats 3] [--steps 12] [--batch 8] [--seq 64] [--bf16]
    sparse-ray bench-data [--rows 10000,100000,1000000] [--repeats 3]
    sparse-ray bench-search MODEL_OR_RUN [--distractors 100000] [--dense minilm]
    sparse-ray sweep --preset P --language L --grid train.document_regularizer_weight=1e-5,3e-5 \\
        [--random K=loguniform(A,B) --samples N] [--scheduler asha] [--max-concurrent K] \\
        [--workers-per-trial W] --output DIR [--flops-budget X] [--keep-all]

The seed script's spelling also works: ``--dataset python --model_type splade --config quick_test``.
User mistakes print one line and exit 2; nothing starts before the config is valid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sparse_ray.config import FLAG_KEYS, flag_overrides, loadable_model
from sparse_ray.console import console, error
from sparse_ray.errors import ConfigError, UserError


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a sparse encoder with Ray Train + DeepSpeed")
    p.add_argument("--language", "--dataset", dest="language", help="language(s), comma-separated, or 'all'")
    p.add_argument("--preset", "--config", dest="preset", default="quick_test", help="preset name or YAML path")
    p.add_argument("--model-type", "--model_type", dest="model_type", help="splade | inference_free_splade")
    p.add_argument("--base-model", "--base_model", dest="base_model", help="registry key, hub id or path")
    p.add_argument("--data", help="sample, a directory, s3://bucket/prefix or hf://datasets/...")
    p.add_argument("--output", help="run directory, local or s3://")
    p.add_argument("--workers", help="worker count, or MIN-MAX for an elastic group (e.g. 2-8)")
    p.add_argument("--zero", type=int, help="DeepSpeed ZeRO stage; 0 = plain DDP")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=int)
    p.add_argument("--address", help="Ray cluster address to join (default: start a local one)")
    p.add_argument("--report-to", dest="report_to", help="none, or any of tensorboard,wandb,mlflow (comma-separated)")
    p.add_argument(
        "--push-to-hub",
        "--push_to_hub",
        dest="push_to_hub",
        metavar="REPO",
        nargs="?",
        const="auto",
        help="push the final model to this hub repo (bare: the output directory's name)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dry-run", action="store_true", help="validate config and data, plan steps, do not train")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last checkpoint (must exist)"
    )


def _data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="CornStack-format data tools")
    verbs = p.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("build", help="build CornStack-format shards from source code")
    i = verbs.add_parser("inspect", help="schema, counts, negatives per row, drops and example rows")
    m = verbs.add_parser("mirror", help="copy a language's shards (default: from the hub) to S3; resumable")
    m.add_argument("--language", required=True)
    m.add_argument("--to", required=True, help="s3://bucket/prefix (or a directory); shards go to <to>/<language>/")
    m.add_argument("--from", dest="source", help="a directory, s3://... or hf://... (default: the hub's CornStack)")
    _score_parser(verbs)
    i.add_argument("path", help="sample, a directory, s3://... or hf://...")
    i.add_argument("--language", default="python")
    i.add_argument("--limit", type=int, help="read at most this many rows")
    b.add_argument("--language", required=True)
    b.add_argument("--source", nargs="+", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--negatives", type=int, default=7)
    b.add_argument("--max-rows", dest="max_rows", type=int)
    b.add_argument(
        "--consistency-k", dest="consistency_k", type=int, default=20, help="keep pairs ranked in the scorer's top k"
    )
    b.add_argument("--teacher", help="mine and score with this SentenceTransformer (e.g. minilm) instead of BM25")


def _score_parser(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("score", help="write a teacher's scores (and with --mine its hard negatives) into shards")
    s.add_argument("--teacher", required=True, help="a SentenceTransformer: minilm, a path or a hub id")
    s.add_argument("--in", dest="source", required=True, help="sample, a directory or s3://... (hf://... online)")
    s.add_argument("--out", required=True, help="a directory or s3://...; shards go to <out>/<language>/")
    s.add_argument("--language", nargs="+", default=["all"], help="languages to score (default: all under --in)")
    s.add_argument("--mine", type=int, default=0, help="replace the negatives by the teacher's top N of the shard")
    s.add_argument("--guard", type=float, default=0.95, help="mining skips documents >= this × the positive's score")


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="sparse-ray train against the plain single-process trainer, side by side")
    p.add_argument("--base-model", dest="base_model", default="minilm")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="2-worker steps per run (1 worker: twice as many, same rows)")
    p.add_argument("--warmup", type=int, default=3, help="2-worker steps left out of throughput (doubled for 1 worker)")
    p.add_argument("--batch", type=int, default=8, help="rows per device per step")
    p.add_argument("--seq", type=int, default=64, help="max sequence length")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 on CPU too (a CPU with avx512_bf16 or AMX)")
    p.add_argument("--scenarios", default="plain,w1_ddp,w1_zero2,w2_zero2,data")
    p.add_argument("--out", default="benchmarks/results", help="directory for the JSON")


def _bench_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-data", help="the data pipeline alone at 10K/100K/1M rows: rows/s and peak memory")
    p.add_argument("--rows", default="10000,100000,1000000", help="dataset sizes, comma-separated")
    p.add_argument("--negatives", type=int, default=7, help="negatives per generated row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/sparse-ray-scale"), help="where the shards are written")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for the JSON")
    p.add_argument("--consume", type=float, help="rows/s one training worker consumes (default: newest bench JSON)")


def cmd_bench_data(args: argparse.Namespace) -> int:
    from sparse_ray.console import data_scale_table
    from sparse_ray.tools.bench_data import bench_data

    try:
        sizes = [int(x) for x in args.rows.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--rows must be comma-separated integers, got {args.rows!r}") from None
    if not sizes or min(sizes) < 100 or args.repeats < 1 or args.negatives < 1:
        raise UserError("--rows sizes must be >= 100, --repeats and --negatives >= 1")
    result = bench_data(sizes, args.negatives, args.repeats, args.work, args.out, args.consume)
    console.print(data_scale_table(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sparse_ray.console import bench_table
    from sparse_ray.tools.bench import SCENARIOS, bench

    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        raise UserError(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if args.steps <= args.warmup + 1 or args.repeats < 1:
        raise UserError("--steps must exceed --warmup + 1 and --repeats must be >= 1")
    args.argv = sys.argv[2:]
    from rich.console import Console

    Console(width=max(console.width, 150)).print(bench_table(bench(args)))
    return 0


DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"


def _jobs_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("submit", help="submit one Ray job per language run of each spec")
    s.add_argument("specs", nargs="+", help="job spec YAML files (jobs/*.yaml)")
    s.add_argument("--language", nargs="+", help="only these languages of the specs")
    s.add_argument("--address", default=None, help=f"Ray job server (default $RAY_ADDRESS or {DEFAULT_JOBS_ADDRESS})")
    s.add_argument("--follow", action="store_true", help="tail the logs until the (single) job ends")
    s.add_argument("--dry-run", action="store_true", help="validate and print the jobs, submit nothing")
    s.add_argument(
        "--cluster-file",
        dest="cluster_file",
        help="refuse runs this cluster definition can never place (cluster/aws.yaml, cluster/kuberay/*.yaml)",
    )
    j = sub.add_parser("jobs", help="list, inspect, follow and stop submitted jobs")
    j.add_argument("--address", default=None)
    verbs = j.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list")
    for verb in ("status", "stop"):
        verbs.add_parser(verb).add_argument("job_id")
    logs = verbs.add_parser("logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true")


def _eval_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="evaluate a trained model; rich tables and a JSON report")
    e.add_argument("model", help="a SparseEncoder directory (a run's --output) or hub id")
    e.add_argument(
        "--eval-type",
        dest="eval_type",
        default="ir,sparsity",
        help="ir,sparsity,tokens,performance,nanobeir,custom or all",
    )
    e.add_argument("--data", help="CornStack-format location (default: the run's training hold-out)")
    e.add_argument("--language", default="python")
    e.add_argument("--limit", type=int, default=300, help="evaluation queries (rows)")
    e.add_argument("--dense-baseline", dest="dense_baseline", help="a SentenceTransformer to compare, e.g. minilm")
    e.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="MODEL",
        help="another SparseEncoder (run or model dir) on the same queries, with paired margins; repeatable",
    )
    e.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    e.add_argument("--output", help="write the JSON report here")
    e.add_argument("--plots", help="write PNG plots into this directory")
    x = sub.add_parser("explain", help="the top weighted vocabulary tokens of a text")
    x.add_argument("model")
    x.add_argument("text")
    x.add_argument("--document", action="store_true", help="encode as a document (default: as a query)")
    x.add_argument("--top-k", dest="top_k", type=int, default=20)


def _index_parsers(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("index", help="encode a corpus with Ray Data and build a searchable index (Seismic)")
    i.add_argument("model", help="a SparseEncoder directory or a run directory")
    i.add_argument("--corpus", required=True, help="CornStack-format location (sample, DIR, s3://) or src:DIR")
    i.add_argument("--language", default="python")
    i.add_argument("--out", required=True, help="index directory (local)")
    i.add_argument("--vectors", help="where the Parquet vectors go (default OUT/vectors; s3:// allowed)")
    i.add_argument("--workers", type=int, default=1, help="encoder replicas")
    i.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float, default=0)
    i.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=int, default=1)
    i.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    i.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=None)
    i.add_argument("--stock-head", dest="fused", action="store_false", help="encode without the fused head")
    i.add_argument("--no-seismic", dest="seismic", action="store_false", help="exact search only")
    i.add_argument("--n-postings", dest="n_postings", type=int, default=3500, help="Seismic postings per token")
    i.add_argument("--summary-energy", dest="summary_energy", type=float, default=0.4, help="Seismic block summaries")
    i.add_argument("--address", default=None, help="Ray cluster to join (default $RAY_ADDRESS or a local one)")
    s = sub.add_parser("search", help="search an index: ranked functions, scores, matching tokens")
    s.add_argument("index")
    s.add_argument("query", nargs="+")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--explain", action="store_true", help="show the shared tokens and their weights")
    s.add_argument("--exact", action="store_true", help="score every document (the reference) instead of Seismic")
    s.add_argument("--query-cut", dest="query_cut", type=int, help="Seismic: the query's largest weights used")
    s.add_argument("--heap-factor", dest="heap_factor", type=float, help="Seismic: block pruning (smaller: more exact)")
    x = sub.add_parser("export", help="export an index for Seismic/Anserini (JSONL) or OpenSearch (rank_features)")
    x.add_argument("index")
    x.add_argument("--format", dest="fmt", default="jsonl", help="jsonl | opensearch")
    x.add_argument("--out", required=True, help="JSONL file, or the OpenSearch folder")
    x.add_argument("--index-name", dest="index_name", default="code", help="OpenSearch index name")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("sweep", help="Ray Tune sweep of training runs: table, Pareto front, recommended model")
    w.add_argument("--preset", "--config", dest="preset", default="quick_test")
    w.add_argument("--language", help="language(s), as for train")
    w.add_argument("--data", help="as for train")
    w.add_argument("--model-type", dest="model_type")
    w.add_argument("--base-model", dest="base_model")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="shared override")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values crossed into trials")
    w.add_argument("--random", action="append", default=[], metavar="KEY=loguniform(A,B)", help="drawn --samples times")
    w.add_argument("--samples", type=int, default=0)
    w.add_argument("--seed", type=int, default=0, help="of the random draws")
    w.add_argument("--scheduler", default="asha", help="asha | fifo")
    w.add_argument("--max-concurrent", dest="max_concurrent", type=int, default=1)
    w.add_argument("--workers-per-trial", dest="workers_per_trial", type=int, default=1)
    w.add_argument("--output", required=True, help="the sweep's directory")
    w.add_argument("--flops-budget", dest="flops_budget", type=float, help="recommend the best trial within it")
    w.add_argument("--keep-all", dest="keep_all", action="store_true", help="keep every trial's final model")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-ray", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _data_parser(sub)
    _jobs_parsers(sub)
    _eval_parsers(sub)
    _index_parsers(sub)
    _bench_parser(sub)
    _bench_data_parser(sub)
    _sweep_parser(sub)
    b = sub.add_parser("bench-search", help="encode + index + search a code corpus against BM25 and dense, one run")
    b.add_argument("model", help="a SparseEncoder directory or a run directory")
    b.add_argument("--distractors", type=int, default=100_000, help="distractor functions added to the unseen set")
    b.add_argument(
        "--distractor-src", dest="distractor_src", nargs="*", type=Path, help="source trees (default: site-packages)"
    )
    b.add_argument("--unseen", default="sparse_ray/sample/unseen", help="CornStack-format unseen set (python)")
    b.add_argument("--workers", type=int, default=2, help="encoder replicas for the whole corpus")
    b.add_argument("--dense", default="minilm", help="dense baseline (exact cosine); 'none' to skip")
    b.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p


def overrides_from(args: argparse.Namespace) -> list[str]:
    """Flags as ``key=value`` overrides, followed by explicit ``--set`` (which win)."""
    return flag_overrides({name: getattr(args, name) for name in FLAG_KEYS}, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from sparse_ray.config import load_config
    from sparse_ray.driver.localray import use_local_ray_env

    cfg = load_config(args.preset, overrides_from(args))
    if cfg.cluster.address is None and not os.environ.get("RAY_ADDRESS"):
        use_local_ray_env()  # before the first import of ray
    from sparse_ray.driver.launch import train

    train(cfg, dry_run=args.dry_run, resume=args.resume)
    return 0


def _known_languages(languages: list[str]) -> None:
    """One line for the first language CornStack-format data cannot have."""
    from sparse_ray.config import LANGUAGES

    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise UserError(f"unknown language {unknown[0]!r}; choose from {', '.join(LANGUAGES)}")


def cmd_data(args: argparse.Namespace) -> int:
    if args.verb == "mirror":
        return _mirror(args)
    if args.verb == "score":
        return _score(args)
    if args.verb == "inspect":
        from sparse_ray.console import inspect_tables
        from sparse_ray.tools.inspect_data import inspect

        _known_languages([args.language])
        for table in inspect_tables(inspect(args.path, args.language, args.limit)):
            console.print(table)
        return 0
    from sparse_ray.tools.build import BuildOptions, build

    try:
        teacher = loadable_model(args.teacher) if args.teacher else None
        opts = BuildOptions(
            num_negatives=args.negatives, max_rows=args.max_rows, consistency_k=args.consistency_k, teacher=teacher
        )
        report = build(args.language, args.source, args.out, opts)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    console.print(report)
    return 0


def _mirror(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from sparse_ray.tools.mirror import mirror

    _known_languages([args.language])
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        report = mirror(args.language, args.to, args.source, progress)
    console.print(
        f"{report.target}: {len(report.copied)} shard(s) copied ({report.bytes_copied / 1e6:.1f} MB), "
        f"{len(report.skipped)} already there; train from it with --data {args.to.rstrip('/')}"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    from sparse_ray.config import LANGUAGES
    from sparse_ray.tools.score import check_options, load_teacher, score

    langs = [lang for lang in LANGUAGES if _has_data(args.source, lang)] if args.language == ["all"] else args.language
    if not langs:
        raise UserError(f"no CornStack shards of any language under {args.source}")
    _known_languages(langs)
    try:
        check_options(args.mine, args.guard)
        model = load_teacher(loadable_model(args.teacher))
        for lang in langs:
            report = score(lang, args.out, model, args.source, args.mine, args.guard)
            console.print(
                f"{report.target}: {len(report.scored)} shard(s) scored ({report.rows} rows, {report.seconds:.0f} s), "
                f"{len(report.skipped)} already there; dropped {dict(report.dropped) or 'none'}"
            )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def _has_data(source: str, language: str) -> bool:
    from sparse_ray.data import sources

    try:
        sources.list_shards(sources.language_root(source, language, several=True), language)
    except UserError:
        return False
    return True


def _address(args: argparse.Namespace) -> str:
    return args.address or os.environ.get("RAY_ADDRESS") or DEFAULT_JOBS_ADDRESS


def cmd_submit(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparse_ray.driver import jobs

    runs = [run for path in args.specs for run in jobs.plan_runs(jobs.load_spec(path), args.language)]
    if args.follow and len(runs) != 1:
        raise UserError(f"--follow needs exactly one job; these specs make {len(runs)} (narrow with --language)")
    if args.cluster_file:
        _check_fit(runs, args.cluster_file)
    table = Table(title="submitted" if not args.dry_run else "would submit", header_style="bold")
    for col in ("job id", "language", "preset"):
        table.add_column(col, no_wrap=True)
    table.add_column("spec", overflow="fold")
    table.add_column("entrypoint", overflow="fold")
    client = None if args.dry_run else jobs.client(_address(args))
    ids = []
    for run in runs:
        job_id = "-" if client is None else jobs.submit(run, client)
        ids.append(job_id)
        table.add_row(job_id, run.language, run.config.preset, run.spec.path, run.entrypoint)
    console.print(table)
    if args.follow and client is not None:
        return jobs.exit_code(jobs.follow(client, ids[0]))
    return 0


def _check_fit(runs: list, cluster_file: str) -> None:
    from sparse_ray.driver import clusterdefs

    cluster = clusterdefs.load(cluster_file)
    for run in runs:
        if problem := cluster.misfit(run.config):
            raise ConfigError(f"{run.name} ({run.spec.path}): {problem}")


def cmd_jobs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparse_ray.driver import jobs

    client = jobs.client(_address(args))
    if args.verb == "list":
        table = Table(title="jobs", header_style="bold")
        for col in ("job id", "status", "language", "preset"):
            table.add_column(col, no_wrap=True)
        table.add_column("entrypoint", overflow="fold")
        for info in client.list_jobs():
            meta = info.metadata or {}
            table.add_row(
                info.submission_id or info.job_id or "-",
                str(info.status.value),
                meta.get("language", "-"),
                meta.get("preset", "-"),
                info.entrypoint,
            )
        console.print(table)
        return 0
    try:
        if args.verb == "status":
            console.print(f"{args.job_id}: {client.get_job_status(args.job_id).value}")
        elif args.verb == "stop":
            client.stop_job(args.job_id)
            console.print(f"{args.job_id}: stop requested")
        elif args.follow:
            return jobs.exit_code(jobs.follow(client, args.job_id))
        else:
            print(client.get_job_logs(args.job_id), end="")
    except RuntimeError as exc:  # the job server answers unknown ids with a RuntimeError
        raise UserError(f"job {args.job_id}: {str(exc).splitlines()[0]}") from None
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sparse_ray.config import loadable_model
    from sparse_ray.console import report_tables
    from sparse_ray.evaluate import IRTask
    from sparse_ray.tools import report as rp

    types = rp.parse_types(args.eval_type)
    if args.limit < 1:
        raise UserError(f"--limit must be >= 1 (evaluation queries), got {args.limit}")
    if "custom" in types and not args.data:
        raise UserError("--eval-type custom needs --data (a CornStack-format path, s3:// or hf:// location)")
    rows, info = rp.eval_rows(args.model, args.data, args.language, args.limit)
    dense = loadable_model(args.dense_baseline) if args.dense_baseline else None
    result = rp.build_report(args.model, types, rows, info, dense, args.batch_size, args.compare)
    if args.plots:
        result["plots"] = rp.plot(result, args.model, args.plots, IRTask.from_rows(rows))
    rp.validate_report(result)
    for table in report_tables(result):
        console.print(table)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
        console.print(f"report: {args.output}")
    return 0


def _nonblank(text: str, what: str) -> str:
    """``text``, or a one-line error: a blank text encodes to an empty vector, which answers nothing."""
    if not text.strip():
        raise UserError(f"{what}; got an empty string")
    return text


def cmd_explain(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparse_ray.evaluate import explain
    from sparse_ray.tools.report import load_model

    _nonblank(args.text, "explain needs a text")
    model = load_model(args.model)
    table = Table(title=f"top tokens ({'document' if args.document else 'query'})", header_style="bold")
    table.add_column("token")
    table.add_column("weight", justify="right")
    for token, weight in explain(model, args.text, query=not args.document, k=args.top_k):
        table.add_row(token, f"{weight:.3f}")
    console.print(table)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from sparse_ray.driver.localray import use_local_ray_env

    if not (args.address or os.environ.get("RAY_ADDRESS")):
        use_local_ray_env()  # before the first import of ray
    from sparse_ray.tools import serve

    request = serve.IndexRequest(
        args.model,
        args.corpus,
        args.language,
        args.out,
        args.vectors,
        args.seismic,
        args.n_postings,
        args.summary_energy,
    )
    options = {k: getattr(args, k) for k in ("workers", "gpus_per_worker", "cpus_per_worker", "batch_size")}
    options.update(max_seq_length=args.max_seq_length, fused=args.fused, address=args.address)
    console.print(serve.index_table(serve.index(request, options), args.out))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from sparse_ray.tools import serve

    query = _nonblank(" ".join(args.query), "search needs a query")
    if args.k < 1:
        raise UserError(f"-k must be >= 1 (results to show), got {args.k}")
    idx = serve.open_index(args.index)
    serve.tune(idx, args.query_cut, args.heap_factor)
    console.print(serve.hits_table(idx, query, idx.search(query, k=args.k, exact=args.exact)[0], args.explain))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sparse_ray.tools import serve

    for path in serve.export_index(serve.open_index(args.index), args.fmt, args.out, args.index_name):
        console.print(f"wrote {path}")
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:
    from sparse_ray.driver.localray import use_local_ray_env

    use_local_ray_env()
    from sparse_ray.tools import bench_search as bs

    roots = args.distractor_src or bs.distractor_roots()
    dense = None if args.dense == "none" else args.dense
    result = bs.bench_search(args.model, args.unseen, args.distractors, roots, args.workers, dense, args.out)
    console.print(bs.search_table(result))
    for line in bs.summary_lines(result):
        console.print(line)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sparse_ray.driver.localray import use_local_ray_env

    use_local_ray_env()
    from sparse_ray.driver import sweep
    from sparse_ray.tools import sweep as report

    flags = {k: getattr(args, k) for k in ("language", "data", "model_type", "base_model")}
    spec = sweep.SweepSpec(
        preset=args.preset,
        overrides=tuple(flag_overrides(flags, args.overrides)),
        grid=sweep.parse_grid(args.grid),
        random=sweep.parse_random(args.random),
        samples=args.samples,
        seed=args.seed,
        scheduler=args.scheduler,
        max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial,
        output=args.output,
    )
    sweep.check(spec)  # every user error, each trial's config included, before Ray starts
    sweep.connect(spec)
    summary = report.write(sweep.run(spec), Path(args.output), args.flops_budget, args.keep_all)
    recommended = summary["recommended"]
    chosen = next((r for r in summary["trials"] if recommended and r["id"] == recommended["id"]), None)
    console.print(report.table(summary["trials"], chosen))
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
    console.print(
        f"{len(summary['trials'])} trials ({counts}), {summary['submitted']} run now: {args.output}/sweep.json"
    )
    if recommended:
        console.print(f"recommended: {recommended['id']} ({recommended['why']}); model: {summary.get('best_model')}")
    return 1 if summary["counts"]["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        commands = {
            "train": cmd_train,
            "data": cmd_data,
            "submit": cmd_submit,
            "jobs": cmd_jobs,
            "evaluate": cmd_evaluate,
            "explain": cmd_explain,
            "index": cmd_index,
            "search": cmd_search,
            "export": cmd_export,
            "bench": cmd_bench,
            "bench-data": cmd_bench_data,
            "bench-search": cmd_bench_search,
            "sweep": cmd_sweep,
        }
        return commands[args.command](args)
    except UserError as exc:
        error(str(exc))
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Rich console output on the driver: the config table, progress lines, the summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sparse_ray.config import flatten

console = Console(highlight=False)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", soft_wrap=True)


def config_table(config: dict[str, Any], title: str = "sparse-ray run") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("setting")
    table.add_column("value")
    for key, value in flatten(config):
        table.add_row(key, str(value))
    return table


def data_table(stats: dict[str, Any]) -> Table:
    table = Table(title="data", header_style="bold")
    for col in ("language", "rows read", "train", "hold-out", "cut", "dropped"):
        table.add_column(col, justify="left" if col in ("language", "dropped") else "right")
    for lang, s in stats.items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "-"
        table.add_row(
            lang, str(s["rows_read"]), str(s["train_rows"]), str(s["holdout_rows"]), str(s["texts_cut"]), dropped
        )
    return table


def summary_table(run: dict[str, Any]) -> Table:
    train, ev = run["train"], run.get("eval", {})
    table = Table(title="sparse-ray result", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("steps", str(train["global_step"]))
    table.add_row("train loss (mean)", f"{train['train_loss']:.4g}")
    table.add_row("samples/s (train loop)", f"{train['samples_per_second']:.2f}")
    table.add_row("rows per worker", ", ".join(map(str, train["rows_per_rank"])))
    table.add_row("wall time", f"{run['wall_seconds']:.1f} s")
    for name in ("untrained", "trained"):
        if ev.get(name):
            e = ev[name]
            table.add_row(f"hold-out nDCG@10 ({name})", f"{e['ndcg@10']:.4f}")
            table.add_row(f"active dims q/d ({name})", f"{e['query_active_dims']:.0f} / {e['corpus_active_dims']:.0f}")
    table.add_row("model", run["output"])
    return table


def _ir_row(table: Table, name: str, m: dict[str, Any]) -> None:
    keys = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")
    dims = ""
    if m.get("query_active_dims") is not None:
        dims = f"{m['query_active_dims']:.0f} / {m['corpus_active_dims']:.0f}"
    table.add_row(name, *(f"{m[k]:.4f}" for k in keys), dims)


def _paired_table(p: dict[str, Any]) -> Table:
    t = Table(
        title=f"model − baseline, {p['metric']} per query ({p['queries']} queries, paired bootstrap × {p['resamples']})"
    )
    for col in ("baseline", "baseline mean", "margin", "95 % interval", "p (margin ≤ 0)"):
        t.add_column(col, justify="left" if col == "baseline" else "right")
    for name, m in p["margins"].items():
        lo, hi = m["ci95"]
        t.add_row(
            name, f"{p['per_system'][name]:.4f}", f"{m['mean']:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]", f"{m['p_value']:.4f}"
        )
    return t


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The evaluation report as rich tables: retrieval next to baselines, then one table per type."""
    tables = []
    metrics, data = report["metrics"], report["data"]
    ir = metrics.get("ir") or metrics.get("custom")
    if ir:
        t = Table(title=f"retrieval: {data['queries']} queries, {data['corpus']} documents ({data['split']})")
        for col in ("model", "nDCG@10", "MRR@10", "R@10", "R@100", "MAP@100", "active q / d"):
            t.add_column(col, justify="left" if col == "model" else "right")
        _ir_row(t, report["model"], ir)
        for name, m in report["baselines"].items():
            _ir_row(t, name, m)
        tables.append(t)
    if report.get("paired"):
        tables.append(_paired_table(report["paired"]))
    if "sparsity" in metrics:
        s = metrics["sparsity"]
        t = Table(title=f"sparsity (vocabulary {s['vocab_size']}, expected FLOPS {s['expected_flops']:.2f})")
        for col in ("", "mean", "median", "p90", "max", "sparsity ratio"):
            t.add_column(col, justify="right")
        for side, key in (("queries", "query"), ("documents", "document")):
            d = s[f"{key}_active_dims"]
            ratio = s[f"{key}_sparsity_ratio"]
            t.add_row(
                side, f"{d['mean']:.1f}", f"{d['median']:.0f}", f"{d['p90']:.0f}", f"{d['max']:.0f}", f"{ratio:.4f}"
            )
        tables.append(t)
    if "tokens" in metrics:
        tok = metrics["tokens"]
        t = Table(title="most important tokens")
        t.add_column("queries")
        t.add_column("documents")
        for (qt, qw), (dt, dw) in zip(tok["query_top"][:15], tok["document_top"][:15], strict=False):
            t.add_row(f"{qt} {qw:.1f}", f"{dt} {dw:.1f}")
        tables.append(t)
    if "performance" in metrics:
        p = metrics["performance"]
        t = Table(title=f"encode throughput (batch {p['batch_size']}, {p['device']})")
        t.add_column("queries/s", justify="right")
        t.add_column("documents/s", justify="right")
        t.add_row(f"{p['queries_per_second']:.1f}", f"{p['documents_per_second']:.1f}")
        tables.append(t)
    return tables


def inspect_tables(info: dict[str, Any]) -> list[Table]:
    """``data inspect`` output: counts, schema, examples."""
    counts = Table(title=f"{info['language']}: {info['path']} ({info['shards']} shards)")
    for col in ("rows", "valid", "negatives/row min", "median", "max", "dropped"):
        counts.add_column(col, justify="right" if col != "dropped" else "left")
    n = info["negatives_per_row"]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(info["dropped"].items())) or "-"
    counts.add_row(str(info["rows"]), str(info["valid"]), str(n["min"]), str(n["median"]), str(n["max"]), dropped)
    schema = Table(title="schema (field: type, rows)")
    schema.add_column("field: type")
    schema.add_column("rows", justify="right")
    for key, count in sorted(info["schema"].items()):
        schema.add_row(key, str(count))
    examples = Table(title="examples", show_lines=True)
    examples.add_column("query", overflow="fold")
    examples.add_column("document (first 300 chars)", overflow="fold")
    for ex in info["examples"]:
        examples.add_row(ex["query"], ex["document"])
    return [counts, schema, examples]


def bench_table(result: dict[str, Any]) -> Table:
    """Benchmark medians (min–max) per scenario, then the ratios the goals are stated in.

    start-up: from the call to the trainer's first step; 1st step: to the end of that step, which
    includes waiting for the data pipeline's first block.
    """
    summary = result["summary"]
    table = Table(title=f"sparse-ray bench — {result['machine']['gpu'] or 'CPU'}", header_style="bold")
    cols = ("samples/s", "step s", "data s", "tokenize s", "collective s", "compute s", "start-up s", "1st step s")
    cols += ("peak RSS MB",)
    for col in ("scenario", *cols):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    keys = ("samples_per_s", "step_s", "data_s_per_step", "tokenize_s_per_step", "collective_s_per_step")
    for name, figures in summary.items():
        if "samples_per_s" not in figures:
            continue
        # results written before first_step_s was recorded show a dash there
        ends = ("compute_s_per_step", "startup_s", "first_step_s", "peak_rss_mb")
        cells = [_mmm(figures[k]) if k in figures else "—" for k in (*keys, *ends)]
        table.add_row(name, *cells)
    ratios = ("w1_ddp_vs_plain", "w1_zero2_vs_plain", "scaling_2_vs_1", "scaling_2_vs_1_ddp", "data_headroom")
    ratios += ("fused_vs_stock_w1_zero2", "fused_vs_stock_w2_zero2", "scaling_2_vs_1_stock", "scaling_vs_ceiling")
    for name in ratios:
        if name in summary:
            table.add_row(name, _mmm(summary[name]), *[""] * (len(cols) - 1))
    return table


def _mmm(s: dict[str, float]) -> str:
    return f"{s['median']:.3g} [{s['min']:.3g}, {s['max']:.3g}]"


def data_scale_table(result: dict[str, Any]) -> Table:
    """``sparse-ray bench-data``: medians per dataset size, then the memory ratios of the two largest."""
    summary = result["summary"]
    table = Table(title="sparse-ray bench-data — the data pipeline alone", header_style="bold")
    cols = ("rows", "1 read task rows/s", "count pass rows/s", "consumer rows/s", "driver MB", "consumer MB")
    for col in (*cols, "headroom"):
        table.add_column(col, justify="right")
    for size, m in summary["per_size"].items():
        headroom = f"{m['headroom_one_read_task']:,.0f}×" if "headroom_one_read_task" in m else "—"
        table.add_row(
            f"{int(size):,}",
            f"{m['read_rows_per_s_one_task']:,.0f}",
            f"{m['count_pass_rows_per_s']:,.0f}",
            f"{m['consumer_rows_per_s']:,.0f}",
            f"{m['driver_peak_uss_mb']:,.0f} ({m['driver_peak_rss_mb']:,.0f})",
            f"{m['consumer_peak_uss_mb']:,.0f} ({m['consumer_peak_rss_mb']:,.0f})",
            headroom,
        )
    table.caption = "MB: peak private memory (USS), peak RSS in brackets; headroom: one read task vs one trainer"
    for key, ratios in summary.items():
        if key.startswith("memory_ratio"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
            table.caption += f"\n{key}: {parts} (goal ≤ 1.15)"
    return table

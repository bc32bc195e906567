"""Rich console output on the driver: the config table, progress lines, the summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", soft_wrap=True)


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def config_table(config: dict[str, Any], title: str = "sparse-ray run") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("setting")
    table.add_column("value")
    for key, value in _flatten(config):
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
            table.add_row(
                f"active dims q/d ({name})",
                f"{e['query_active_dims']['mean']:.0f} / {e['document_active_dims']['mean']:.0f}",
            )
    table.add_row("model", run["output"])
    return table

"""What a sweep leaves behind: the table sorted by nDCG@10, JSON and CSV, the Pareto front of
nDCG@10 against expected FLOPS per query–document pair (PNG), the recommended trial and its model
at ``DIR/best/model``. Other trials keep only their ``run.json`` unless ``keep_all``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from rich.table import Table

METRIC, COST = "ndcg@10", "avg_flops"


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["state"] == "finished" and r.get(METRIC) is not None and r.get(COST) is not None]


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials no other beats on both nDCG@10 (higher) and expected FLOPS (lower), by FLOPS."""
    front, best = [], float("-inf")
    for row in sorted(_scored(rows), key=lambda r: (r[COST], -r[METRIC])):
        if row[METRIC] > best:
            front.append(row)
            best = row[METRIC]
    return front


def recommend(rows: list[dict[str, Any]], flops_budget: float | None) -> tuple[dict[str, Any] | None, str]:
    """(trial, why): the best nDCG@10 within the budget, else the knee of the front."""
    front = pareto(rows)
    if not front:
        return None, "no finished trial with metrics"
    if flops_budget is not None:
        within = [r for r in front if r[COST] <= flops_budget]
        if within:
            return max(within, key=lambda r: r[METRIC]), f"best nDCG@10 within {flops_budget:g} FLOPS"
        return front[0], f"no trial within {flops_budget:g} FLOPS: the cheapest"
    if len(front) <= 2:
        return max(front, key=lambda r: r[METRIC]), "best nDCG@10 (front of ≤ 2 points)"
    (x0, y0), (x1, y1) = (front[0][COST], front[0][METRIC]), (front[-1][COST], front[-1][METRIC])
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def distance(r: dict[str, Any]) -> float:  # from the chord between the ends, both axes scaled to 1
        return abs(((r[COST] - x0) / sx) - ((r[METRIC] - y0) / sy))

    return max(front, key=distance), "the knee of the front (farthest from its chord)"


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r.get(METRIC) is None, -(r.get(METRIC) or 0.0)))


def table(rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> Table:
    keys = sorted({k for r in rows for k in r["params"]})
    t = Table(title="sweep: trials by nDCG@10", header_style="bold")
    for col in ["", *keys, "state", "nDCG@10", "MRR@10", "q dims", "d dims", "FLOPS", "step"]:
        t.add_column(col, justify="left" if col in ("", "state") or col in keys else "right")
    front = {r["id"] for r in pareto(rows)}

    def num(r: dict[str, Any], k: str, fmt: str) -> str:
        return format(r[k], fmt) if r.get(k) is not None else "—"

    for r in sorted_rows(rows):
        mark = "★" if chosen is not None and r["id"] == chosen["id"] else ("·" if r["id"] in front else "")
        t.add_row(
            mark,
            *[r["params"].get(k, "") for k in keys],
            r["state"],
            num(r, METRIC, ".4f"),
            num(r, "mrr@10", ".4f"),
            num(r, "query_active_dims", ".1f"),
            num(r, "corpus_active_dims", ".1f"),
            num(r, COST, ".2f"),
            str(r.get("step", "—")),
        )
    return t


def plot(rows: list[dict[str, Any]], chosen: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored, front = _scored(rows), pareto(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r[COST] for r in scored], [r[METRIC] for r in scored], color="tab:gray", label="trial")
    ax.plot([r[COST] for r in front], [r[METRIC] for r in front], "o-", color="tab:blue", label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen[COST]], [chosen[METRIC]], marker="*", s=200, color="tab:red", label="recommended")
    ax.set_xlabel("expected FLOPS per query-document pair")
    ax.set_ylabel("hold-out nDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict[str, Any], out: Path, flops_budget: float | None, keep_all: bool) -> dict[str, Any]:
    """sweep.json, sweep.csv, pareto.png and best/model; returns the JSON written."""
    rows = result["trials"]
    chosen, why = recommend(rows, flops_budget)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        **result,
        "trials": sorted_rows(rows),
        "pareto": [r["id"] for r in pareto(rows)],
        "recommended": {"id": chosen["id"], "why": why} if chosen else None,
        "counts": {s: sum(r["state"] == s for r in rows) for s in ("finished", "stopped", "failed", "pending")},
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out / "sweep.csv", "w", newline="") as fh:
        keys = sorted({k for r in rows for k in r["params"]})
        writer = csv.writer(fh)
        writer.writerow(
            ["id", *keys, "state", METRIC, "mrr@10", "query_active_dims", "corpus_active_dims", COST, "step"]
        )
        for r in summary["trials"]:
            values = [r.get(k) for k in (METRIC, "mrr@10", "query_active_dims", "corpus_active_dims", COST, "step")]
            writer.writerow([r["id"], *[r["params"].get(k, "") for k in keys], r["state"], *values])
    plot(rows, chosen, out / "pareto.png")
    if chosen is not None:
        summary["best_model"] = _publish(chosen, out / "best")
        (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    if not keep_all:
        for r in rows:
            if chosen is None or r["id"] != chosen["id"]:
                shutil.rmtree(Path(r["dir"]) / "model", ignore_errors=True)
    return summary


def _publish(chosen: dict[str, Any], best: Path) -> str | None:
    """Copy the chosen trial's model to ``best/model`` (atomically); None when it is gone (an
    earlier invocation without ``keep_all`` removed it because another trial was recommended then)."""
    src, dst, marker = Path(chosen["dir"]) / "model", best / "model", best / "trial.json"
    if not src.is_dir():
        held = json.loads(marker.read_text())["id"] if marker.is_file() else None
        return str(dst) if held == chosen["id"] else None
    best.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    marker.write_text(json.dumps({"id": chosen["id"], "params": chosen["params"]}))
    return str(dst)

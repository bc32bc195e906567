"""``sparse-ray bench``: the distributed trainer against the plain single-process trainer, in one run.

    sparse-ray bench [--base-model minilm] [--repeats 3] [--steps 12] [--warmup 3] [--batch 8] \\
        [--seq 64] [--gpus-per-worker 0] [--out benchmarks/results]

Driver side. Scenarios, on the same model, rows, sequence length and per-device batch, every
process pinned to its own core with one torch thread (``cluster.pin_workers``):

- ``plain``: ``SparseEncoderTrainer`` in this process on a ``datasets.Dataset`` (the seed's way);
- ``w1_ddp`` / ``w1_zero2``: ``sparse-ray train`` with 1 worker, ZeRO off and ZeRO-2;
- ``w2_zero2`` / ``w2_ddp``: 2 workers (global batch doubles), for scaling efficiency;
- ``data``: rows/s one consumer pulls from the same Ray Data pipeline without training;
- ``plain_pair``: two ``plain`` trainers at once, one per core, no Ray and no exchange: their
  samples/s over twice ``plain``'s is the most 2-vs-1 scaling this machine allows (shared caches,
  memory bandwidth, the kernel), the ceiling to read ``scaling_2_vs_1`` against.

Every scenario trains on the same rows: ``--steps`` and ``--warmup`` count 2-worker steps, and the
1-worker and plain runs take twice as many steps of the same per-device batch over the same
``steps × batch × 2`` rows (leaving out the same warm-up rows). Comparing runs that read different
rows measures the rows: on the python sample, 10 steps of 1 worker over its first 80 rows ran
8 % faster per step than over its first 192, enough to move scaling from 0.85 to 0.73.

Each repeat runs every scenario once, in the same order, so slow drift hits them all alike; ratios
are taken per repeat, then summarised as median (min, max). Throughput counts steps after the
warm-up. Results go to ``<out>/<machine>-<date>.json`` and a rich table.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sparse_ray.console import console

#: Dense bf16 peak FLOP/s of GPUs we may run on, for model FLOPs utilisation (vendor figures).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12}
SCENARIOS = (
    *("plain", "w1_ddp", "w1_zero2", "w2_zero2", "w2_ddp", "data"),
    *("w1_zero2_stock", "w2_zero2_stock", "plain_pair"),
)
#: Distributed scenarios: (workers, ZeRO stage, fused SPLADE head).
DISTRIBUTED = {
    "w1_ddp": (1, 0, True),
    "w1_zero2": (1, 2, True),
    "w2_zero2": (2, 2, True),
    "w2_ddp": (2, 0, True),
    "w1_zero2_stock": (1, 2, False),
    "w2_zero2_stock": (2, 2, False),
}
#: The most workers any scenario uses; every scenario reads ``steps × batch × MAX_WORKERS`` rows.
MAX_WORKERS = 2


def rows_per_run(args: Any) -> int:
    """Rows every scenario trains on (the same rows, in the same order)."""
    return args.steps * args.batch * MAX_WORKERS


def steps_for(args: Any, workers: int) -> tuple[int, int]:
    """(steps, warm-up steps) for a run with ``workers`` workers: the same rows, split into steps."""
    scale = MAX_WORKERS // workers
    return args.steps * scale, args.warmup * scale


def steady(steps: list[dict[str, float]], warmup: int, global_batch: int) -> dict[str, float]:
    """Throughput and per-step stage seconds over the steps after ``warmup``.

    ``steps`` are cumulative records at each step end: ``t`` (seconds since train begin), ``tokens``
    and the seconds spent so far in ``data``, ``tokenize`` and ``collective``.
    """
    if len(steps) <= warmup + 1:
        raise ValueError(f"need more than {warmup + 1} steps to measure after warm-up, got {len(steps)}")
    first, last = steps[warmup], steps[-1]
    n = len(steps) - 1 - warmup
    span = last["t"] - first["t"]
    out = {
        "samples_per_s": n * global_batch / span,
        "step_s": span / n,
        "tokens_per_s": (last["tokens"] - first["tokens"]) / span,
    }
    for stage in ("data", "tokenize", "collective"):
        out[f"{stage}_s_per_step"] = (last.get(stage, 0.0) - first.get(stage, 0.0)) / n
    out["compute_s_per_step"] = out["step_s"] - sum(out[f"{s}_s_per_step"] for s in ("data", "tokenize", "collective"))
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---------------------------------------------------------------- scenarios


def _settings(args: Any, workers: int, zero: int, out: str, fused: bool = True) -> list[str]:
    return [
        f"model.fused_head={str(fused).lower()}",
        "data.path=sample",
        f"model.base={args.base_model}",
        f"output={out}",
        f"cluster.workers={workers}",
        f"cluster.zero={zero}",
        f"cluster.gpus_per_worker={args.gpus_per_worker}",
        f"cluster.bf16={'true' if uses_bf16(args) else 'false'}",
        "cluster.pin_workers=true",
        f"data.max_samples={rows_per_run(args)}",
        "data.eval_queries=0",
        "data.shuffle_buffer=0",
        f"train.batch_size={args.batch}",
        f"train.logging_steps={steps_for(args, workers)[0]}",
        "train.save_steps=0",
        f"model.max_seq_length={args.seq}",
    ]


def uses_bf16(args: Any) -> bool:
    """bf16 on GPUs always, on CPUs when ``--bf16`` asks (every scenario alike)."""
    return bool(args.gpus_per_worker) or args.bf16


def run_distributed(args: Any, workers: int, zero: int, fused: bool = True) -> dict[str, Any]:
    """One ``sparse-ray train`` run; returns steady-state figures and start-up time."""
    from sparse_ray.config import load_config
    from sparse_ray.driver.launch import train

    with tempfile.TemporaryDirectory(prefix="sparse-ray-bench-") as tmp:
        cfg = load_config("quick_test", _settings(args, workers, zero, os.path.join(tmp, "run"), fused))
        called = time.time()
        with console.capture():
            run = train(cfg)
        timing = run["train"]["timing"]
        figures = steady(timing["steps"], steps_for(args, workers)[1], cfg.global_batch)
        if args.gpus_per_worker:
            from sentence_transformers import SparseEncoder

            params = sum(p.numel() for p in SparseEncoder(os.path.join(tmp, "run", "model")).parameters())
            # tokens/s is rank 0's; every rank processes as many
            figures["mfu"] = mfu(figures["tokens_per_s"] * workers, params, machine()["gpu"], workers)
    figures["startup_s"] = timing["train_begin_wall"] - called
    # the first step also waits for the data pipeline's first block
    figures["first_step_s"] = figures["startup_s"] + timing["steps"][0]["t"]
    figures["wall_s"] = run["wall_seconds"]
    figures["peak_rss_mb"] = max(run["train"].get("peak_rss_mb_per_rank", [0.0]))
    # whole-run seconds per stage and call, per rank: where a rank waited for the other
    figures["spent_per_rank"] = run["train"].get("spent_per_rank", [])
    return figures


def run_plain_pair(args: Any) -> dict[str, Any]:
    """Two ``plain`` runs at once in two processes, on the first and the last core of this one's."""
    import multiprocessing

    cores = sorted(os.sched_getaffinity(0))
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        pair = pool.starmap(run_plain, [(args, cores[0]), (args, cores[-1])])
    figures = {key: statistics.mean(run[key] for run in pair) for key in pair[0]}
    figures["samples_per_s"] = sum(run["samples_per_s"] for run in pair)  # the two together
    return figures


def run_plain(args: Any, core: int | None = None) -> dict[str, Any]:
    """The plain single-process ``SparseEncoderTrainer`` on the same rows, one core, one thread,
    with the SPLADE head the workers use (``model.fused_head``)."""
    import datasets
    import torch
    import transformers
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from transformers import TrainerCallback

    from sparse_ray.config import load_config, loadable_model
    from sparse_ray.data.cornstack import is_holdout
    from sparse_ray.evaluate import read_rows
    from sparse_ray.fused_head import use_fused_head
    from sparse_ray.model import model_from_config, router_mapping
    from sparse_ray.worker.loss import build_loss

    cfg = load_config("quick_test", _settings(args, 1, 0, "unused"))
    # the training side of the hold-out split, in file order: the rows `sparse-ray train` reads
    every = read_rows("sample", "python", num_negatives=1)
    rows = [r for r in every if not is_holdout(r["anchor"], "python", cfg.data.holdout_fraction)][: rows_per_run(args)]
    max_steps, warmup = steps_for(args, 1)
    steps: list[dict[str, float]] = []
    spent = {"tokenize": 0.0, "tokens": 0.0}

    class Timer(TrainerCallback):
        def on_train_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            steps.append({"t": time.perf_counter() - self.begin, **spent})

    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(affinity) if core is None else core})
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        transformers.set_seed(cfg.train.seed)
        model = model_from_config(cfg.model, loadable_model(args.base_model))
        if cfg.model.fused_head and (why := use_fused_head(model)) is not None:
            raise RuntimeError(f"the plain scenario cannot use the fused head the workers use: {why}")
        with tempfile.TemporaryDirectory(prefix="sparse-ray-plain-") as tmp:
            trainer = SparseEncoderTrainer(
                model=model,
                args=SparseEncoderTrainingArguments(
                    output_dir=tmp,
                    max_steps=max_steps,
                    per_device_train_batch_size=args.batch,
                    learning_rate=cfg.train.learning_rate,
                    use_cpu=not args.gpus_per_worker,
                    bf16=uses_bf16(args),
                    save_strategy="no",
                    report_to=[],
                    disable_tqdm=True,
                    router_mapping=router_mapping(cfg.model.type, list(rows[0])),
                ),
                train_dataset=datasets.Dataset.from_list(rows),
                loss=build_loss(model, cfg.train, cfg.model.type, 1),
                callbacks=[timer := Timer()],
            )
            trainer.data_collator = _Timed(trainer.data_collator, spent)
            trainer.train()
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    figures = steady(steps, warmup, args.batch)
    figures["startup_s"] = timer.begin - started  # model load to the trainer's first step, as for the workers
    figures["first_step_s"] = figures["startup_s"] + steps[0]["t"]
    return figures


class _Timed:
    """The trainer's data collator, timed (it tokenises); attributes pass through to it."""

    def __init__(self, collate: Any, spent: dict[str, float]) -> None:
        self.collate, self.spent = collate, spent

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        began = time.perf_counter()
        batch = self.collate(rows)
        self.spent["tokenize"] += time.perf_counter() - began
        self.spent["tokens"] += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collate, name)


def run_data(args: Any) -> dict[str, Any]:
    """Rows/s one consumer pulls from the training pipeline (parse, split, select), no training."""
    import ray

    from sparse_ray.config import load_config
    from sparse_ray.data import pipeline, sources

    cfg = load_config("quick_test", _settings(args, 1, 0, "unused") + ["data.max_samples=null"])
    ds = pipeline.split_rows(pipeline.read(cfg, sources.resolve_sources(cfg)), "train", 1)

    @ray.remote(num_cpus=1)
    def consume(shard: Any) -> tuple[int, float, float]:
        started, first, rows = time.perf_counter(), None, 0
        for batch in shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            batch.to_pylist()
            if first is None:  # the first batch (pipeline start-up) only starts the clock
                first = time.perf_counter()
                continue
            rows += batch.num_rows
        ended = time.perf_counter()
        return rows, ended - (first or started), (first or ended) - started

    rows, seconds, first_batch = ray.get(consume.remote(ds))
    return {"rows": rows, "rows_per_s": rows / seconds, "first_batch_s": first_batch}


# ---------------------------------------------------------------- the whole benchmark


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


def mfu(tokens_per_s: float, params: int, gpu: str | None, workers: int) -> float | None:
    """Model FLOPs utilisation: 6 × parameters × tokens/s over the GPUs' dense bf16 peak."""
    peak = next((v for k, v in PEAK_BF16.items() if gpu and k in gpu), None)
    return None if peak is None else 6 * params * tokens_per_s / (peak * workers)


def bench(args: Any) -> dict[str, Any]:
    """Run every scenario ``args.repeats`` times; returns (and writes) the results."""
    from sparse_ray.config import load_config
    from sparse_ray.driver.cluster import connect

    connect(load_config("quick_test", ["cluster.workers=2", f"cluster.gpus_per_worker={args.gpus_per_worker}"]))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.scenarios}
    for repeat in range(args.repeats):
        for name in args.scenarios:
            console.print(f"[bold]repeat {repeat + 1}/{args.repeats}[/]: {name}")
            runs[name].append(_scenario(name, args))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "sparse-ray bench " + " ".join(args.argv),
        "settings": {k: getattr(args, k) for k in ("base_model", "steps", "warmup", "batch", "seq", "repeats")},
        "runs": runs,
        "summary": summarise(runs),
    }
    _write(result, args.out)
    return result


def _scenario(name: str, args: Any) -> dict[str, Any]:
    if name == "plain":
        return run_plain(args)
    if name == "data":
        return run_data(args)
    if name == "plain_pair":
        return run_plain_pair(args)
    return run_distributed(args, *DISTRIBUTED[name])


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per scenario and ratios taken within each repeat."""
    out: dict[str, Any] = {}
    for name, results in runs.items():
        if results and "samples_per_s" in results[0]:
            numbers = [k for k, v in results[0].items() if isinstance(v, int | float)]
            out[name] = {k: summary([r[k] for r in results]) for k in numbers}
    ratios = {
        "w1_ddp_vs_plain": ("w1_ddp", "plain", 1.0),
        "w1_zero2_vs_plain": ("w1_zero2", "plain", 1.0),
        "pair_vs_plain": ("plain_pair", "plain", 2.0),
        "scaling_2_vs_1": ("w2_zero2", "w1_zero2", 2.0),
        "scaling_2_vs_1_ddp": ("w2_ddp", "w1_ddp", 2.0),
        "fused_vs_stock_w1_zero2": ("w1_zero2", "w1_zero2_stock", 1.0),
        "fused_vs_stock_w2_zero2": ("w2_zero2", "w2_zero2_stock", 1.0),
        "scaling_2_vs_1_stock": ("w2_zero2_stock", "w1_zero2_stock", 2.0),
    }
    for key, (a, b, scale) in ratios.items():
        if runs.get(a) and runs.get(b):
            out[key] = summary(
                [x["samples_per_s"] / (scale * y["samples_per_s"]) for x, y in zip(runs[a], runs[b], strict=True)]
            )
    if all(runs.get(name) for name in ("w2_zero2", "w1_zero2", "plain_pair", "plain")):
        # the 2-vs-1 scaling as a share of what two independent trainers reach on this machine
        per_repeat = zip(runs["w2_zero2"], runs["w1_zero2"], runs["plain_pair"], runs["plain"], strict=True)
        out["scaling_vs_ceiling"] = summary(
            [
                (w2["samples_per_s"] / w1["samples_per_s"]) / (two["samples_per_s"] / one["samples_per_s"])
                for w2, w1, two, one in per_repeat
            ]
        )
    if runs.get("data") and runs.get("w1_zero2"):
        out["data_headroom"] = summary(
            [d["rows_per_s"] / t["samples_per_s"] for d, t in zip(runs["data"], runs["w1_zero2"], strict=True)]
        )
    return out


def _write(result: dict[str, Any], out_dir: str) -> Path:
    host = result["machine"]["gpu"] or f"cpu{result['machine']['cpus']}"
    path = Path(out_dir) / f"{host.replace(' ', '_')}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {path}")
    return path

"""Trainer callbacks of a worker, one concept each; each takes what it needs through its constructor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from sparse_ray.evaluate import eval_point
from sparse_ray.rundir import checkpoint_name
from sparse_ray.worker.checkpoint import write_state
from sparse_ray.worker.plan import WorkerPlan
from sparse_ray.worker.state import WorkerState


class Heartbeat(TrainerCallback):
    """Tells the watchdog that a step finished; keeps step times for the benchmark."""

    def __init__(self, state: WorkerState, max_steps: int) -> None:
        self.state, self.max_steps = state, max_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.state.times.train_begin_wall, self.state.times.begin = time.time(), time.perf_counter()
        self.state.dog.beat(step=False)  # start-up is over: from here every step must finish in time

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        dog, times = self.state.dog, self.state.times
        dog.beat()
        times.steps.append(
            {"t": time.perf_counter() - times.begin, "tokens": self.state.counters["tokens"], **dog.spent}
        )
        if state.global_step >= self.max_steps:
            control.should_save = False  # the final model follows at once: no checkpoint for it
        return control


class ReportCheckpoints(TrainerCallback):
    """Every rank reports its part of the checkpoint the trainer just wrote; Ray merges them."""

    def __init__(self, plan: WorkerPlan, run: dict[str, Any], state: WorkerState, log: Callable[[str], None]) -> None:
        self.plan, self.run, self.state, self.log = plan, run, state, log

    def on_save(self, args: Any, trainer_state: Any, control: Any, **kw: Any) -> None:
        import ray.train

        step = trainer_state.global_step
        folder = os.path.join(args.output_dir, f"checkpoint-{step}")
        if self.state.rank == 0:
            reason = "preemption" if self.state.preempted_at == step else "periodic"
            write_state(folder, self.plan, self.run, step, final=False, reason=reason)
        with self.state.dog.stage_of("collective", "checkpoint upload"):
            ray.train.report(
                {"step": step, "checkpoint": True},
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=checkpoint_name(step),
            )
        self.log(f"checkpoint at step {step} saved to the run's storage")


class PreemptionCheck(TrainerCallback):
    """Every ``every`` steps all ranks ask Ray Train whether a node of the group is being preempted
    (a drain with a deadline; Ray Train's PreemptionWatcher marks every worker). The first notice
    makes the trainer checkpoint at this step boundary, before the node goes; training then goes
    on until Ray Train restarts the group (from that checkpoint) when the node is gone.

    ``ray.train.get_preemption_info`` is a barrier that agrees on one answer across ranks, so
    every rank decides the same and the checkpoint (a collective under ZeRO) is taken by all.
    """

    def __init__(self, state: WorkerState, every: int, max_steps: int, log: Callable[[str], None]) -> None:
        self.state, self.every, self.max_steps, self.log = state, every, max_steps, log

    def on_step_end(self, args: Any, trainer_state: Any, control: Any, **kw: Any) -> Any:
        import ray.train

        step = trainer_state.global_step
        if not self.every or step % self.every or step >= self.max_steps or self.state.preempted_at is not None:
            return control
        with self.state.dog.stage_of("collective", "preemption check"):
            info = ray.train.get_preemption_info()
        if info is not None:
            self.state.preempted_at = step
            control.should_save = True
            self.log(f"node preemption notice (ranks {info.preempted_ranks}): checkpoint at step {step}")
        return control


class ResumeAccount(TrainerCallback):
    """After the first step of a resumed attempt, the rows all ranks replayed (skipped as already
    trained) next to the rows the lineage had trained in this epoch: their difference is what a
    resize skipped or repeated (``attempt["rows_replayed"]``; the goal, and the design, is equal)."""

    def __init__(self, state: WorkerState, run: dict[str, Any]) -> None:
        self.state, self.run, self.done = state, run, False

    def on_step_end(self, args: Any, trainer_state: Any, control: Any, **kw: Any) -> None:
        if self.done:
            return
        import torch
        import torch.distributed as dist

        from sparse_ray.worker.checkpoint import record_group

        self.done = True
        replayed = torch.tensor([self.state.counters["rows_replayed"]], dtype=torch.long)
        if dist.is_initialized():
            with self.state.dog.stage_of("collective", "resume accounting"):
                dist.all_reduce(replayed)
        attempt = self.run["attempts"][-1]
        attempt["rows_replayed"] = int(replayed.item())
        if self.state.rank == 0:
            record_group(attempt)


class RowLog(TrainerCallback):
    """Tests only (``plan.row_log``): appends, per step, the step and a key of every row's anchor
    this rank trained to ``<dir>/group-<started_ns>-from-<step>-of-<workers>-rank-R.jsonl``."""

    def __init__(self, folder: str, state: WorkerState, attempt: dict[str, Any]) -> None:
        name = f"group-{attempt['started_ns']}-from-{attempt['from_step']}-of-{attempt['workers']}"
        self.path = os.path.join(folder, f"{name}-rank-{state.rank}.jsonl")
        self.state = state
        os.makedirs(folder, exist_ok=True)

    def on_step_end(self, args: Any, trainer_state: Any, control: Any, **kw: Any) -> None:
        import hashlib
        import json

        rows = [row for batch in self.state.step_rows for row in batch]
        keys = [hashlib.sha1(row["anchor"].encode()).hexdigest()[:16] for row in rows]
        self.state.step_rows.clear()
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": trainer_state.global_step, "keys": keys}) + "\n")


class ReportEvaluations(TrainerCallback):
    """All ranks run the evaluator (it splits encoding across them) and all must report."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
        import ray.train

        with self.state.dog.stage_of("collective", "evaluation report"):
            ray.train.report(eval_point(metrics or {}, state.global_step))


class Progress(TrainerCallback):
    """One line per logging step on rank 0: step, bar, losses, learning rate, samples/s, time left."""

    def __init__(self, log: Callable[[str], None], max_steps: int, global_batch: int) -> None:
        self.log, self.max_steps, self.global_batch = log, max_steps, global_batch

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.first = self.last = (state.global_step, time.perf_counter())

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if logs and any(k.startswith("eval_") for k in logs):
            ev = eval_point(logs, state.global_step)
            shown = "  ".join(f"{k} {v:.4g}" for k, v in ev.items() if k != "step")
            self.log(f"eval at step {state.global_step}: {shown}")
            return
        if not logs or "loss" not in logs:
            return
        step, now = state.global_step, time.perf_counter()
        rate = (step - self.last[0]) * self.global_batch / max(now - self.last[1], 1e-9)
        self.last = (step, now)
        per_step = (now - self.first[1]) / max(step - self.first[0], 1)
        eta = per_step * (self.max_steps - step)
        self.log(progress_line(step, self.max_steps, logs, rate, eta, gpu_status()))


def progress_line(step: int, max_steps: int, logs: dict[str, float], rate: float, eta_s: float, gpu: str) -> str:
    """``step 12/40 ━━━━━━╸────────────── 30%  loss 0.71 … 3.9 samples/s  eta 1m49s  [gpu …]``."""
    parts = [f"{k.removeprefix('train_')} {v:.4g}" for k, v in logs.items() if k not in ("epoch", "grad_norm")]
    fraction = step / max_steps
    line = f"step {step}/{max_steps} {bar(fraction)} {100 * fraction:.0f}%  " + "  ".join(parts)
    line += f"  {rate:.1f} samples/s  eta {duration(eta_s)}"
    return f"{line}  {gpu}" if gpu else line


def bar(fraction: float, width: int = 20) -> str:
    """A text progress bar (the line is forwarded through Ray's log stream, not a terminal)."""
    done = min(max(fraction, 0.0), 1.0) * width
    full = int(done)
    half = "╸" if full < width and done - full >= 0.5 else ""
    return "━" * full + half + "─" * (width - full - len(half))


def gpu_status() -> str:
    """GPU utilisation (NVML, when installed) and peak memory of this worker's GPU; "" on CPU."""
    import torch

    if not torch.cuda.is_available():
        return ""
    gib = torch.cuda.max_memory_allocated() / 2**30
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    try:
        util = f"{torch.cuda.utilization()}% util, "
    except Exception:  # noqa: BLE001 - NVML (nvidia-ml-py) missing or unsupported: memory only
        util = ""
    return f"gpu {util}{gib:.1f}/{total:.0f} GiB peak"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class TrackRun(TrainerCallback):
    """Rank 0 gives the W&B / MLflow run (started by Hugging Face's callbacks, which run first) the
    resolved sparse-ray config and the data table, and closes the run when training ends, so an
    offline W&B run is complete before Ray ends the worker process."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        config, trackers = self.plan.config.to_dict(), self.plan.config.train.trackers
        columns, rows = data_rows(self.plan.data_table)
        if "wandb" in trackers:
            import wandb

            if wandb.run is not None:
                wandb.run.config.update({"sparse_ray": config}, allow_val_change=True)
                wandb.run.log({"sparse_ray/data": wandb.Table(columns=columns, data=rows)}, commit=False)
        if "mlflow" in trackers:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_dict(config, "sparse_ray/config.json")
                mlflow.log_dict({"columns": columns, "rows": rows}, "sparse_ray/data.json")

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        if "wandb" in self.plan.config.train.trackers:
            import wandb

            if wandb.run is not None:
                wandb.run.finish()
        if "mlflow" in self.plan.config.train.trackers:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run()


def data_rows(table: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The data table (``DataStats.to_dict()``) as columns and one row per language."""
    columns = ["language", "rows_read", "train_rows", "holdout_rows", "texts_cut", "negatives_guarded", "dropped"]
    rows = [[lang] + [v[c] for c in columns[1:-1]] + [sum(v["dropped"].values())] for lang, v in table.items()]
    return columns, rows

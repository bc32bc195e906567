"""The entry point of every Ray Train worker: :func:`train_loop` (the driver passes it to Ray Train).

Each worker builds the same model (same seed), reads exactly its own Ray Data shards
(``feed``), and trains with sentence-transformers' ``SparseEncoderTrainer`` under DeepSpeed ZeRO
(or DDP for stage 0; ``trainer``). Everything it needs arrives in one frozen
:class:`~sparse_ray.worker.plan.WorkerPlan`; what its parts share lives in one
:class:`~sparse_ray.worker.state.WorkerState`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import warnings
from typing import Any

from sparse_ray.rundir import FINAL_CHECKPOINT, TRAINING_LOG
from sparse_ray.worker.checkpoint import record_stall, restore, write_state
from sparse_ray.worker.log import RankLog
from sparse_ray.worker.plan import WorkerPlan
from sparse_ray.worker.state import WorkerState
from sparse_ray.worker.watchdog import Watchdog


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config["plan"]`` is the run's :class:`WorkerPlan`."""
    plan: WorkerPlan = config["plan"]
    for key, value in plan.worker_env.items():
        os.environ.setdefault(key, value)
    if not plan.use_gpu:  # Ray Train names a CUDA device for accelerate on any GPU-reserving worker
        os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside torch/ST collectives

    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if plan.config.cluster.pin_workers:
        _pin(ctx.get_local_rank())
    dog = Watchdog(plan.config.train.stall_timeout, rank, record=record_stall)
    world = ctx.get_world_size()
    state = WorkerState(
        rank=rank,
        batch_size=plan.device_batch(world),
        slot_batch=plan.slot_batch,
        log_rows=bool(plan.row_log),
        dog=dog,
        fault=plan.fault,
        schedule=plan.schedule,
        dedup=plan.config.data.dedup_batches,
        seq_lengths=plan.seq_lengths(),
    )
    dog.start()
    try:
        _train(plan, state, world)
    finally:
        dog.stop()


def _pin(local_rank: int) -> None:
    """One core and one torch thread for this worker (benchmarks: no oversubscription)."""
    import torch

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[local_rank % len(cores)]})
    torch.set_num_threads(1)


def _skip_deepspeed_op_probe() -> None:
    """Keep DeepSpeed's comm backend from probing ops and building one training never calls.

    On creation it probes every op builder with compiler subprocesses (~2 s per worker, every run)
    and JIT-compiles a shared-memory all-reduce used only by ``inference_all_reduce`` (~60 s on a
    node or venv without its build cache). Its only reader is that build step; an empty table
    skips both, and ``inference_all_reduce`` would fall back to torch.distributed.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__ = {}


def _train(plan: WorkerPlan, state: WorkerState, world: int) -> None:
    import deepspeed.comm
    import ray.train
    import torch.distributed as dist

    from sparse_ray.worker.feed import start_pipelines

    _skip_deepspeed_op_probe()
    state.dog.watch_collectives(dist, deepspeed.comm)
    if plan.tensorboard_dir:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", plan.tensorboard_dir)
    log = RankLog(state.rank)
    resume_from, run = restore(state, world, plan.global_batch)
    if run["final"]:  # the run had finished; the driver only needs the final checkpoint again
        log("the latest checkpoint is the final model; nothing left to train")
        ray.train.report({"global_step": run["global_step"], "resumed_final": True})
        return
    if resume_from:
        before = run["attempts"][-2].get("workers", world)
        resized = f"; resized {before} → {world} workers" if before != world else ""
        log(f"resuming from step {run['global_step']} (attempt {len(run['attempts'])}{resized})")
    for lang in plan.languages:
        state.shards[lang] = ray.train.get_dataset_shard(f"train_{lang}")
    start_pipelines(state, plan.config.data.shuffle_buffer, plan.config.train.seed)
    with tempfile.TemporaryDirectory(prefix="sparse-ray-work-") as work_dir:
        trainer = _trainer(plan, state, run, log, world, work_dir)
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume_from)
        _report_final(trainer, plan, state, run, output, time.perf_counter() - t0, work_dir)
    if resume_from:
        shutil.rmtree(resume_from, ignore_errors=True)


def _trainer(plan: WorkerPlan, state: WorkerState, run: dict[str, Any], log: RankLog, world: int, work: str) -> Any:
    """The model, the row stream as a Hugging Face iterable dataset, and the trainer around them."""
    import datasets
    import transformers
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
    from transformers.trainer_callback import PrinterCallback

    from sparse_ray.evaluate import IRTask, sparse_evaluator
    from sparse_ray.fused_head import use_fused_head
    from sparse_ray.model import model_from_config
    from sparse_ray.worker.callbacks import (
        Heartbeat,
        PreemptionCheck,
        Progress,
        ReportCheckpoints,
        ReportEvaluations,
        ResumeAccount,
        RowLog,
        TrackRun,
    )
    from sparse_ray.worker.feed import rows
    from sparse_ray.worker.loss import build_loss
    from sparse_ray.worker.trainer import ShardTrainer, training_args

    cfg = plan.config
    transformers.set_seed(cfg.train.seed)
    started = time.perf_counter()
    model = model_from_config(cfg.model, plan.base_model, log=log)
    if cfg.model.fused_head:
        why = use_fused_head(model)
        state.counters["fused_head"] = int(why is None)
        log("fused SPLADE head on" if why is None else f"fused SPLADE head off: {why}")
    log(f"model ready in {time.perf_counter() - started:.1f}s; {world} workers, ZeRO {cfg.cluster.zero}")
    # "language" rides along to the collator, which checks and strips it (it is not a text input)
    # and a teacher's "label" (not a text input either: the collator stacks it as the loss's labels)
    features = datasets.Features({c: datasets.Value("string") for c in [*plan.columns, "language"]})
    features["step"] = datasets.Value("int64")  # the optimizer step a row trains (the collator strips it)
    if plan.label:
        features["label"] = datasets.Sequence(datasets.Value("float32"))
    train_ds = datasets.IterableDataset.from_generator(
        rows,
        features=features,
        # a tuple, not a list: Hugging Face splits list-valued gen_kwargs into shards
        gen_kwargs={
            "state": state,
            "cols": plan.columns,
            "buffer": cfg.data.shuffle_buffer,
            "seed": cfg.train.seed,
            "label": plan.label,
        },
    )
    args = training_args(plan, work, world)
    loss = build_loss(model, cfg.train, cfg.model.type, world, counts=state.counters)
    trainer = ShardTrainer(
        worker_state=state,
        model=model,
        args=args,
        train_dataset=train_ds,
        loss=loss,
        evaluator=sparse_evaluator(IRTask.from_rows(list(plan.holdout))) if args.eval_strategy != "no" else None,
        callbacks=[
            # explicit, so the trainer does not add (and announce) its default: quadratic over 1/3
            SpladeRegularizerWeightSchedulerCallback(loss),
            Progress(log, plan.max_steps, plan.global_batch),
            ReportEvaluations(state),
            ReportCheckpoints(plan, run, state, log),
            Heartbeat(state, plan.max_steps),
            TrackRun(plan),
            PreemptionCheck(state, cfg.train.preemption_check_steps, plan.max_steps, log),
            ResumeAccount(state, run),
            *([RowLog(plan.row_log, state, run["attempts"][-1])] if plan.row_log else []),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
    return trainer


def _report_final(
    trainer: Any, plan: WorkerPlan, state: WorkerState, run: dict[str, Any], output: Any, seconds: float, work: str
) -> None:
    """Save the final model (all ranks take part) and report it with the run's metrics."""
    import json

    import ray
    import ray.train

    from sparse_ray import windows
    from sparse_ray.worker.summary import gather_records, merge_records
    from sparse_ray.worker.trainer import save_model_files, zero_stage

    final = os.path.join(work, FINAL_CHECKPOINT)
    if state.seq_lengths[1]:  # the run ended on long steps: the saved model encodes that length
        trainer.model.max_seq_length = state.seq_lengths[1]
    with state.dog.stage_of("collective", "final save"):
        save_model_files(trainer.model, final, zero_stage(trainer), state.rank)
    if state.rank == 0:  # how the saved model reads long documents (training read the first window)
        windows.write(final, windows.DocumentWindows.of(plan.config.model))
    mine = state.record() | {"node": ray.get_runtime_context().get_node_id()}
    per_rank = gather_records(mine)
    steps_here = output.global_step - run["global_step"]
    metrics = {
        "global_step": output.global_step,
        "train_loss": output.training_loss,
        "train_seconds": seconds,
        "samples_per_second": steps_here * plan.global_batch / max(seconds, 1e-9),
        **merge_records(per_rank),
        "attempts": run["attempts"],
        "host": socket.gethostname(),
        "timing": {"train_begin_wall": state.times.train_begin_wall, "steps": state.times.steps},
    }
    checkpoint = None
    if state.rank == 0:
        with open(os.path.join(final, TRAINING_LOG), "w") as fh:
            json.dump(trainer.state.log_history, fh)
        write_state(final, plan, run, output.global_step, final=True, metrics=metrics)
        checkpoint = ray.train.Checkpoint.from_directory(final)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=FINAL_CHECKPOINT)

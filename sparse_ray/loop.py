"""The train loop: the only code in this package that runs on Ray Train workers.

Each worker builds the same model (same seed), reads exactly its own Ray Data shard, and trains it
with sentence-transformers' ``SparseEncoderTrainer`` under DeepSpeed ZeRO (or DDP for stage 0).
Everything it needs arrives in one plain ``dict`` built by the driver (``launch.worker_plan``).

Traps avoided here, each verified on this stack:
- the train dataloader does not go through ``accelerator.prepare``: with ``dispatch_batches`` on,
  rank 0 reads for everyone and Ray's streaming split deadlocks; with it off accelerate re-shards
  the Ray shard and silently drops rows. A plain DataLoader makes each rank read its own rows.
- CPU workers set ``use_cpu=True``; without it accelerate sees no GPU and every worker trains an
  unsynchronised copy.
- ZeRO-3 saves empty tensors unless the parameters are gathered, on all ranks, around the save.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sparse_ray.batches import scheduled_batches
from sparse_ray.watchdog import Watchdog

#: Rows this process has fed to the trainer, and epochs started. Module globals, like _SHARD:
#: Hugging Face datasets hashes and copies generator arguments, which would pickle Ray's iterator.
_FED: Counter = Counter()
#: This worker's Ray Data shard of each language, and the plan's schedule and dedup flag.
_SHARD: dict[str, Any] = {}
_SHARD_PLAN: dict[str, Any] = {}
#: Per language: the coming epoch's pipeline, started before the model is built (``_start_pipelines``).
_EARLY: dict[str, dict[str, Any]] = {}
#: The trainer's log history (losses per logging step), saved next to the model.
TRAINING_LOG = "training_log.json"
#: In every checkpoint: global step, data position, attempts so far, whether it is the final model.
STATE_FILE = "sparse_ray_state.json"
#: Ray checkpoint directory names: periodic ones sort by step, the final model comes last.
FINAL_CHECKPOINT = "final"
#: Fault injection for tests, set on the driver, e.g. ``stall:rank=1:step=2`` (rank 1 stops getting
#: data after step 2).
FAULT_ENV = "SPARSE_RAY_FAULT"
#: Step-end times and cumulative stage seconds of this worker (reported with the final metrics).
TIMING: dict[str, Any] = {}
#: The watchdog of this worker (a no-op one until the loop starts a real one).
_WATCH: dict[str, Any] = {}


class RankLog:
    """Prints on rank 0 only, tagged with host and rank (Ray forwards it to the driver)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.tag = f"[{socket.gethostname()}:{rank}]"

    def __call__(self, message: str) -> None:
        if self.rank == 0:
            # write, not print: Ray Train patches print() and would tee every line twice
            sys.stdout.write(f"{self.tag} {message}\n")
            sys.stdout.flush()


def _shard_batches(lang: str, epoch: int, buffer: int, seed: int) -> Iterator[Any]:
    """This worker's pyarrow batches of one language for ``epoch`` (shuffled per epoch)."""
    return iter(
        _SHARD[lang].iter_batches(
            batch_size=256,
            batch_format="pyarrow",
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=seed + epoch if buffer else None,
        )
    )


def _start_pipelines(buffer: int, seed: int) -> None:
    """Ask every language's shard for its first batch now, one background thread each.

    Ray Data starts a streaming split's read tasks when a worker first asks it for rows. Asked
    before the model is built, that start-up (seconds on a fresh cluster) overlaps model load and
    DeepSpeed init instead of following them. The main thread takes the iterator over in
    ``_epoch_batches``; nothing here touches the watchdog, whose stage marks belong to the main thread.
    """
    epoch = _FED["epochs"]
    for lang in _SHARD:
        early: dict[str, Any] = {"epoch": epoch}

        def pull(lang: str = lang, early: dict[str, Any] = early) -> None:
            try:
                early["batches"] = _shard_batches(lang, epoch, buffer, seed)
                early["first"] = next(early["batches"], None)
            except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
                early["error"] = exc

        early["thread"] = threading.Thread(target=pull, name=f"sparse-ray-start-{lang}", daemon=True)
        early["thread"].start()
        _EARLY[lang] = early


def _epoch_batches(lang: str, epoch: int, buffer: int, seed: int) -> Iterator[Any]:
    """The shard's batches for ``epoch``: the pipeline started early if it was this epoch's."""
    early = _EARLY.pop(lang, None)
    if early is None or early["epoch"] != epoch:
        return _shard_batches(lang, epoch, buffer, seed)
    early["thread"].join()
    if "error" in early:
        raise early["error"]
    return itertools.chain([] if early["first"] is None else [early["first"]], early["batches"])


def _language_rows(lang: str, cols: tuple[str, ...], epoch: int, buffer: int, seed: int) -> Any:
    """This worker's rows of one language, as dicts with exactly ``cols``, shuffled per epoch."""
    watch = _WATCH["dog"]
    with watch.stage_of("data"):
        batches = _epoch_batches(lang, epoch, buffer, seed)
    while True:
        with watch.stage_of("data"):
            batch = next(batches, None)
        if batch is None:
            return
        yield from batch.select([*cols, "language"]).to_pylist()


def _rows(cols: tuple[str, ...], buffer: int, seed: int) -> Any:
    """Yield this worker's rows batch by batch along the plan's language schedule (``batches``).

    The order is a function of the seed and the epoch (Ray Data runs with ``preserve_order``), so a
    resumed run replays the batches of the steps it already trained (without tokenising them) and
    continues the same stream (``_FED["skip_steps"]``).
    """
    epoch = _FED["epochs"]
    _FED["epochs"] += 1
    skip = _FED.pop("skip_steps", 0)
    streams = {lang: _language_rows(lang, cols, epoch, buffer, seed) for lang in _SHARD}
    run = _SHARD_PLAN
    made = scheduled_batches(streams, run["schedule"], _WATCH["batch"], cols, run["dedup"], _FED)
    for step, (lang, batch) in enumerate(made):
        if step < skip:
            continue
        for row in batch:
            if _WATCH["fault"]:
                with _WATCH["dog"].stage_of("data"):
                    _injected_stall()
            _FED["rows"] += 1
            _FED[f"rows:{lang}"] += 1
            yield row


def _injected_stall() -> None:
    """Fault injection (tests only): ``SPARSE_RAY_FAULT=stall:rank=R:step=S`` starves rank R of data."""
    spec = _WATCH["fault"]
    if not spec.startswith("stall:"):
        return
    want = dict(part.split("=") for part in spec.split(":")[1:])
    if int(want["rank"]) == _WATCH["rank"] and _FED["rows"] >= int(want["step"]) * _WATCH["batch"]:
        while True:
            time.sleep(0.2)


def _trainer_class() -> type:
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer
    from torch.utils.data import DataLoader

    class ShardTrainer(SparseEncoderTrainer):
        """SparseEncoderTrainer whose train dataloader reads the worker's own Ray shard as is."""

        def get_train_dataloader(self) -> DataLoader:
            import torch

            self._train_dataloader = DataLoader(
                self.train_dataset,
                batch_size=self.args.per_device_train_batch_size,
                collate_fn=_timed_collator(self.data_collator),
                drop_last=True,
                # its own generator: creating an iterator would otherwise draw from the global RNG
                # after a resume restored it, and dropout would differ from the uninterrupted run
                generator=torch.Generator().manual_seed(self.args.seed),
            )
            return self._train_dataloader

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            with _grad_free_not_inference():
                return super().evaluate(*args, **kwargs)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            """The model in loadable SparseEncoder form, for every ZeRO stage (see ``save_model_files``)."""
            ctx = self.accelerator.state
            save_model_files(self.model, output_dir or self.args.output_dir, _zero_stage(self), ctx.process_index)

    return ShardTrainer


@contextlib.contextmanager
def _grad_free_not_inference() -> Any:
    """Run sentence-transformers' encode under no_grad instead of inference_mode.

    Under ZeRO-3, parameters gathered inside inference_mode become inference tensors, and the next
    training step fails with "Inference tensors cannot be saved for backward".
    """
    import torch

    original = torch.inference_mode
    torch.inference_mode = lambda mode=True: torch.no_grad() if mode else original(False)
    try:
        yield
    finally:
        torch.inference_mode = original


def _timed_collator(collate: Any) -> Any:
    """The trainer's collator (it tokenises), timed as the ``tokenize`` stage; counts tokens, and
    counts the batches per language (and any batch that mixes languages) as the model sees them."""

    def timed(rows: list[dict[str, Any]]) -> Any:
        langs = {row.pop("language") for row in rows}
        _FED["mixed_batches"] += len(langs) > 1
        for lang in langs:
            _FED[f"batches:{lang}"] += 1
        with _WATCH["dog"].stage_of("tokenize"):
            batch = collate(rows)
        _FED["tokens"] += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        return batch

    return timed


def _zero_stage(trainer: Any) -> int:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def _callbacks(log: RankLog, plan: dict[str, Any], state: dict[str, Any]) -> list[Any]:
    """Progress lines on rank 0, hold-out evaluations and checkpoints reported to Ray Train."""
    from transformers import TrainerCallback

    max_steps, global_batch = plan["max_steps"], plan["global_batch"]

    class Heartbeat(TrainerCallback):
        """Tells the watchdog that a step finished; keeps step times for the benchmark."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            TIMING.update(train_begin_wall=time.time(), begin=time.perf_counter(), steps=[])
            _WATCH["dog"].beat()  # start-up is over: from here every step must finish in time

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            dog = _WATCH["dog"]
            dog.beat()
            TIMING["steps"].append({"t": time.perf_counter() - TIMING["begin"], "tokens": _FED["tokens"], **dog.spent})
            if state.global_step >= max_steps:
                control.should_save = False  # the final model follows at once: no checkpoint for it
            return control

    class ReportCheckpoints(TrainerCallback):
        """Every rank reports its part of the checkpoint the trainer just wrote; Ray merges them."""

        def on_save(self, args: Any, trainer_state: Any, control: Any, **kw: Any) -> None:
            import ray.train

            step = trainer_state.global_step
            folder = os.path.join(args.output_dir, f"checkpoint-{step}")
            write_state(folder, plan, state, step, final=False)
            with _WATCH["dog"].stage_of("collective", "checkpoint upload"):
                ray.train.report(
                    {"step": step, "checkpoint": True},
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"step-{step:08d}",
                )
            log(f"checkpoint at step {step} saved to the run's storage")

    class ReportEvaluations(TrainerCallback):
        """All ranks run the evaluator (it splits encoding across them) and all must report."""

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
            import ray.train

            with _WATCH["dog"].stage_of("collective", "evaluation report"):
                ray.train.report(eval_point(metrics or {}, state.global_step))

    class Progress(TrainerCallback):
        """One line per logging step: step, losses, learning rate, samples/s and time left."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.first = self.last = (state.global_step, time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and any(k.startswith("eval_") for k in logs):
                ev = eval_point(logs, state.global_step)
                log(
                    f"eval at step {state.global_step}: "
                    + "  ".join(f"{k} {v:.4g}" for k, v in ev.items() if k != "step")
                )
                return
            if not logs or "loss" not in logs:
                return
            step, now = state.global_step, time.perf_counter()
            rate = (step - self.last[0]) * global_batch / max(now - self.last[1], 1e-9)
            self.last = (step, now)
            per_step = (now - self.first[1]) / max(step - self.first[0], 1)
            log(progress_line(step, max_steps, logs, rate, per_step * (max_steps - step), _gpu_status()))

    return [Progress(), ReportEvaluations(), ReportCheckpoints(), Heartbeat()]


def progress_line(step: int, max_steps: int, logs: dict[str, float], rate: float, eta_s: float, gpu: str) -> str:
    """``step 12/40 ━━━━━━╸────────────── 30%  loss 0.71 … 3.9 samples/s  eta 1m49s  [gpu …]``."""
    parts = [f"{k.removeprefix('train_')} {v:.4g}" for k, v in logs.items() if k not in ("epoch", "grad_norm")]
    fraction = step / max_steps
    line = f"step {step}/{max_steps} {_bar(fraction)} {100 * fraction:.0f}%  " + "  ".join(parts)
    line += f"  {rate:.1f} samples/s  eta {_duration(eta_s)}"
    return f"{line}  {gpu}" if gpu else line


def _bar(fraction: float, width: int = 20) -> str:
    """A text progress bar (the line is forwarded through Ray's log stream, not a terminal)."""
    done = min(max(fraction, 0.0), 1.0) * width
    full = int(done)
    half = "╸" if full < width and done - full >= 0.5 else ""
    return "━" * full + half + "─" * (width - full - len(half))


def _gpu_status() -> str:
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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def eval_point(logs: dict[str, Any], step: int) -> dict[str, float]:
    """Hold-out metrics from a trainer log entry (``eval_ir_dot_ndcg@10`` → ``ndcg@10``)."""
    keep = ("ndcg@10", "mrr@10", "recall@10", "query_active_dims", "corpus_active_dims")
    point = {"step": step}
    for key, value in logs.items():
        short = key.removeprefix("eval_ir_").removeprefix("dot_")
        if short in keep:
            point[short] = float(value)
    return point


def _training_args(plan: dict[str, Any], work_dir: str) -> Any:
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments

    from sparse_ray.model import STATIC_EMBEDDING_PATTERN, router_mapping

    cfg, train, model = plan["config"], plan["config"]["train"], plan["config"]["model"]
    inference_free = model["type"] == "inference_free_splade"
    return SparseEncoderTrainingArguments(
        output_dir=work_dir,
        max_steps=plan["max_steps"],
        per_device_train_batch_size=train["batch_size"],
        learning_rate=train["learning_rate"],
        warmup_steps=train["warmup_ratio"],
        weight_decay=train["weight_decay"],
        seed=train["seed"],
        use_cpu=not plan["use_gpu"],
        bf16=_bf16(plan),
        deepspeed=plan["deepspeed"],
        gradient_checkpointing=train["gradient_checkpointing"],
        logging_steps=train["logging_steps"],
        save_strategy="steps" if train["save_steps"] and train["save_steps"] < plan["max_steps"] else "no",
        save_steps=train["save_steps"] or plan["max_steps"],
        save_total_limit=1,  # local copies only; Ray Train keeps train.keep_checkpoints in storage
        ignore_data_skip=True,  # the row stream skips trained rows itself (no tokenising to skip)
        eval_strategy="steps" if plan["holdout"] and train["eval_steps"] < plan["max_steps"] else "no",
        eval_steps=train["eval_steps"],
        per_device_eval_batch_size=train["batch_size"],
        report_to=[] if train["report_to"] == "none" else [train["report_to"]],
        ddp_find_unused_parameters=False,
        dataloader_drop_last=True,
        disable_tqdm=True,
        router_mapping=router_mapping(model["type"], plan["columns"]),
        learning_rate_mapping={STATIC_EMBEDDING_PATTERN: train["static_embedding_lr"]} if inference_free else {},
        run_name=os.path.basename(cfg["output"].rstrip("/")) or "sparse-ray",
    )


def _bf16(plan: dict[str, Any]) -> bool:
    """``auto`` means bf16 on GPUs that support it, fp32 elsewhere."""
    choice = plan["config"]["cluster"]["bf16"]
    if choice != "auto":
        return choice == "true"
    import torch

    return plan["use_gpu"] and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _loss(model: Any, train: dict[str, Any], model_type: str, world: int) -> Any:
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    ranking = SparseMultipleNegativesRankingLoss(
        model, scale=train["similarity_scale"], gather_across_devices=world > 1
    )
    query_weight = 0.0 if model_type == "inference_free_splade" else train["query_regularizer_weight"]
    return SpladeLoss(
        model,
        ranking,
        document_regularizer_weight=train["document_regularizer_weight"],
        query_regularizer_weight=query_weight,
    )


def save_model_files(model: Any, out: str, zero: int, rank: int) -> None:
    """Write the full model to ``out`` on rank 0 in SparseEncoder form; collective under ZeRO-3.

    - ZeRO-3 partitions parameters: every rank enters ``GatheredParameters`` and saves (a save on
      rank 0 alone inside the gather hangs); ranks other than 0 write to a scratch directory.
    - ZeRO-1/2 leave each parameter as a view into a padded flat buffer, which safetensors refuses
      ("no suitable name ... covering the entire storage"): rank 0 saves copies and puts the views
      back, so training can go on after a checkpoint.
    """
    if zero == 3:
        import deepspeed

        target = out if rank == 0 else tempfile.mkdtemp(prefix="sparse-ray-discard-")
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            model.save(target)
        if rank != 0:
            shutil.rmtree(target, ignore_errors=True)
        return
    if rank != 0:
        return
    views = [(param, param.data) for param in model.parameters()]
    for param, data in views:
        param.data = data.clone()
    try:
        model.save(out)
    finally:
        for param, data in views:
            param.data = data


def write_state(
    folder: str, plan: dict[str, Any], state: dict[str, Any], step: int, final: bool, metrics: dict | None = None
) -> None:
    """Rank 0 records the run's position (and, at the end, its metrics) in a checkpoint (``STATE_FILE``)."""
    if _WATCH["rank"] != 0:
        return
    record = {
        "global_step": step,
        "final": final,
        "rows_trained_per_rank": step * plan["config"]["train"]["batch_size"],
        "epoch": step // plan["steps_per_epoch"],
        "steps_into_epoch": step % plan["steps_per_epoch"],
        "attempts": state["attempts"],
        "metrics": metrics or {},
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, STATE_FILE), "w") as fh:
        json.dump(record, fh, indent=2)


def restore(plan: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The latest checkpoint of this run, downloaded, and the run state to continue from.

    Returns ``(checkpoint folder or None, state)``; ``state["attempts"]`` lists every start of the
    worker group, this one included, with the step it started from.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": 0}
    if checkpoint is None:
        return None, {"attempts": [attempt], "final": False, "global_step": 0}
    local = tempfile.mkdtemp(prefix="sparse-ray-resume-")
    with _WATCH["dog"].stage_of("data", "checkpoint download"):
        checkpoint.to_directory(local)
    with open(os.path.join(local, STATE_FILE)) as fh:
        state = json.load(fh)
    attempt["from_step"] = state["global_step"]
    state["attempts"] = [*state["attempts"], attempt]
    # checkpoints written before the language schedule recorded rows, not steps, into the epoch
    into = state.get("steps_into_epoch", state.get("rows_into_epoch", 0) // _WATCH["batch"])
    _FED["epochs"], _FED["skip_steps"] = state.get("epoch", 0), into
    return local, state


def _record_stall(record: dict[str, Any]) -> None:
    """Write a watchdog record into the run's storage, where the driver looks for it."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    path = f"{storage.experiment_fs_path}/stalls/rank-{record['rank']}.json"
    storage.storage_filesystem.create_dir(path.rsplit("/", 1)[0])
    with storage.storage_filesystem.open_output_stream(path) as fh:
        fh.write(json.dumps(record).encode())


def train_loop(plan: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker (see the module docstring)."""
    for key, value in plan["worker_env"].items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside torch/ST collectives

    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if plan["config"]["cluster"]["pin_workers"]:
        _pin(ctx.get_local_rank())
    timeout = plan["config"]["train"]["stall_timeout"]
    dog = Watchdog(timeout, rank, record=_record_stall)
    _WATCH.update(dog=dog, rank=rank, batch=plan["config"]["train"]["batch_size"], fault=plan["fault"])
    dog.start()
    try:
        _train(plan, ctx)
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


def _train(plan: dict[str, Any], ctx: Any) -> None:
    import datasets
    import deepspeed.comm
    import ray.train
    import torch.distributed as dist
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from sparse_ray.evaluate import IRTask, sparse_evaluator
    from sparse_ray.model import model_from_config

    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _skip_deepspeed_op_probe()
    _WATCH["dog"].watch_collectives(dist, deepspeed.comm)
    if plan["tensorboard_dir"]:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", plan["tensorboard_dir"])
    log = RankLog(rank)
    cfg = plan["config"]
    train, model_cfg = cfg["train"], cfg["model"]
    resume_from, state = restore(plan)
    if state["final"]:  # the run had finished; the driver only needs the final checkpoint again
        log("the latest checkpoint is the final model; nothing left to train")
        ray.train.report({"global_step": state["global_step"], "resumed_final": True})
        return
    if resume_from:
        log(f"resuming from step {state['global_step']} (attempt {len(state['attempts'])})")
    for lang in sorted(set(plan["schedule"])):
        _SHARD[lang] = ray.train.get_dataset_shard(f"train_{lang}")
    _SHARD_PLAN.update(schedule=plan["schedule"], dedup=cfg["data"]["dedup_batches"])
    _start_pipelines(cfg["data"]["shuffle_buffer"], train["seed"])
    transformers.set_seed(train["seed"])
    started = time.perf_counter()
    model = model_from_config(model_cfg, plan["base_model"])
    log(f"model ready in {time.perf_counter() - started:.1f}s; {world} workers, ZeRO {cfg['cluster']['zero']}")

    # "language" rides along to the collator, which checks and strips it (it is not a text input)
    features = datasets.Features({c: datasets.Value("string") for c in [*plan["columns"], "language"]})
    train_ds = datasets.IterableDataset.from_generator(
        _rows,
        features=features,
        # a tuple, not a list: Hugging Face splits list-valued gen_kwargs into shards
        gen_kwargs={"cols": tuple(plan["columns"]), "buffer": cfg["data"]["shuffle_buffer"], "seed": train["seed"]},
    )
    with tempfile.TemporaryDirectory(prefix="sparse-ray-work-") as work_dir:
        args = _training_args(plan, work_dir)
        trainer = _trainer_class()(
            model=model,
            args=args,
            train_dataset=train_ds,
            loss=_loss(model, train, model_cfg["type"], world),
            evaluator=sparse_evaluator(IRTask.from_rows(plan["holdout"])) if args.eval_strategy != "no" else None,
            callbacks=_callbacks(log, plan, state),
        )
        trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.perf_counter() - t0
        _report_final(trainer, plan, state, output, train_seconds, work_dir)
    if resume_from:
        shutil.rmtree(resume_from, ignore_errors=True)


def _report_final(
    trainer: Any, plan: dict[str, Any], state: dict[str, Any], output: Any, seconds: float, work: str
) -> None:
    """Save the final model (all ranks take part) and report it with the run's metrics."""
    import ray.train
    import torch.distributed as dist

    rank, world = _WATCH["rank"], ray.train.get_context().get_world_size()
    final = os.path.join(work, FINAL_CHECKPOINT)
    with _WATCH["dog"].stage_of("collective", "final save"):
        save_model_files(trainer.model, final, _zero_stage(trainer), rank)
    per_language = {k.split(":", 1)[1]: v for k, v in _FED.items() if k.startswith("rows:")}
    batching = {key: _FED[key] for key in ("rows_deferred", "duplicates_admitted", "mixed_batches")} | {
        "batches": {k.split(":", 1)[1]: v for k, v in _FED.items() if k.startswith("batches:")}
    }
    mine = (_FED["rows"], ray.get_runtime_context().get_node_id(), per_language, batching)
    per_rank: list[Any] = [mine]
    if dist.is_initialized():
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
    steps_here = output.global_step - state["global_step"]
    metrics = {
        "global_step": output.global_step,
        "train_loss": output.training_loss,
        "train_seconds": seconds,
        "samples_per_second": steps_here * plan["global_batch"] / max(seconds, 1e-9),
        "rows_per_rank": [r[0] for r in per_rank],
        "node_per_rank": [r[1] for r in per_rank],
        "rows_per_language": dict(sum((Counter(r[2]) for r in per_rank), Counter())),
        "batching_per_rank": [r[3] for r in per_rank],
        "attempts": state["attempts"],
        "host": socket.gethostname(),
        "timing": {"train_begin_wall": TIMING.get("train_begin_wall"), "steps": TIMING.get("steps", [])},
    }
    checkpoint = None
    if rank == 0:
        with open(os.path.join(final, TRAINING_LOG), "w") as fh:
            json.dump(trainer.state.log_history, fh)
        write_state(final, plan, state, output.global_step, final=True, metrics=metrics)
        checkpoint = ray.train.Checkpoint.from_directory(final)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=FINAL_CHECKPOINT)

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
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from typing import Any

#: Rows this process has fed to the trainer, and epochs started. Module globals, like _SHARD:
#: Hugging Face datasets hashes and copies generator arguments, which would pickle Ray's iterator.
_FED: Counter = Counter()
_SHARD: dict[str, Any] = {}
#: The trainer's log history (losses per logging step), saved next to the model.
TRAINING_LOG = "training_log.json"


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


def _rows(cols: tuple[str, ...], buffer: int, seed: int) -> Any:
    """Yield this worker's rows, one dict per row with exactly ``cols``; reshuffled per epoch."""
    epoch = _FED["epochs"]
    _FED["epochs"] += 1
    batches = _SHARD["train"].iter_batches(
        batch_size=256,
        batch_format="pyarrow",
        local_shuffle_buffer_size=buffer or None,
        local_shuffle_seed=seed + epoch if buffer else None,
    )
    for batch in batches:
        for row in batch.select(list(cols)).to_pylist():
            _FED["rows"] += 1
            yield row


def _trainer_class() -> type:
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer
    from torch.utils.data import DataLoader

    class ShardTrainer(SparseEncoderTrainer):
        """SparseEncoderTrainer whose train dataloader reads the worker's own Ray shard as is."""

        def get_train_dataloader(self) -> DataLoader:
            self._train_dataloader = DataLoader(
                self.train_dataset,
                batch_size=self.args.per_device_train_batch_size,
                collate_fn=self.data_collator,
                drop_last=True,
            )
            return self._train_dataloader

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            with _grad_free_not_inference():
                return super().evaluate(*args, **kwargs)

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


def _callbacks(log: RankLog, max_steps: int, global_batch: int) -> list[Any]:
    """Progress lines on rank 0, and every hold-out evaluation reported to Ray Train."""
    from transformers import TrainerCallback

    class ReportEvaluations(TrainerCallback):
        """All ranks run the evaluator (it splits encoding across them) and all must report."""

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
            import ray.train

            ray.train.report(eval_point(metrics or {}, state.global_step))

    class Progress(TrainerCallback):
        """One line per logging step: step, losses, learning rate, samples/s."""

        def __init__(self) -> None:
            self.last = (0, time.perf_counter())

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
            parts = [f"{k.removeprefix('train_')} {v:.4g}" for k, v in logs.items() if k not in ("epoch", "grad_norm")]
            log(f"step {step}/{max_steps}  " + "  ".join(parts) + f"  {rate:.1f} samples/s")

    return [Progress(), ReportEvaluations()]


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
        save_strategy="no",
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


def _save(model: Any, zero: int, rank: int) -> str | None:
    """Write the full model once; returns the directory on rank 0 (None elsewhere)."""
    out = tempfile.mkdtemp(prefix=f"sparse-ray-model-{rank}-")
    if zero == 3:
        import deepspeed

        # Gathering is collective: every rank enters, and every rank saves its own copy (a save on
        # rank 0 alone inside the gather hangs); only rank 0's copy is reported.
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            model.save(out)
    elif rank == 0:
        # ZeRO-1/2 leave each parameter as a view into a padded flat buffer, which safetensors
        # refuses to save ("no suitable name ... covering the entire storage"); training is over,
        # so give every parameter its own storage first.
        for param in model.parameters():
            param.data = param.data.clone()
        model.save(out)
    return out if rank == 0 else None


def train_loop(plan: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker (see the module docstring)."""
    for key, value in plan["worker_env"].items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside torch/ST collectives

    import datasets
    import ray.train
    import torch.distributed as dist
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from sparse_ray.evaluate import IRTask, sparse_evaluator
    from sparse_ray.model import model_from_config

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if plan["tensorboard_dir"]:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", plan["tensorboard_dir"])
    log = RankLog(rank)
    cfg = plan["config"]
    train, model_cfg = cfg["train"], cfg["model"]
    transformers.set_seed(train["seed"])
    started = time.perf_counter()
    model = model_from_config(model_cfg, plan["base_model"])
    log(f"model ready in {time.perf_counter() - started:.1f}s; {world} workers, ZeRO {cfg['cluster']['zero']}")

    _SHARD["train"] = ray.train.get_dataset_shard("train")
    features = datasets.Features({c: datasets.Value("string") for c in plan["columns"]})
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
            callbacks=_callbacks(log, plan["max_steps"], plan["global_batch"]),
        )
        trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
        t0 = time.perf_counter()
        output = trainer.train()
        train_seconds = time.perf_counter() - t0
        model_dir = _save(trainer.model, cfg["cluster"]["zero"], rank)

    mine = (_FED["rows"], ray.get_runtime_context().get_node_id())
    per_rank: list[Any] = [mine]
    if dist.is_initialized():
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
    metrics = {
        "global_step": output.global_step,
        "train_loss": output.training_loss,
        "train_seconds": train_seconds,
        "samples_per_second": output.global_step * plan["global_batch"] / max(train_seconds, 1e-9),
        "rows_per_rank": [rows for rows, _ in per_rank],
        "node_per_rank": [node for _, node in per_rank],
        "host": socket.gethostname(),
    }
    checkpoint = None
    if model_dir:
        with open(os.path.join(model_dir, TRAINING_LOG), "w") as fh:
            json.dump(trainer.state.log_history, fh)
        checkpoint = ray.train.Checkpoint.from_directory(model_dir)
    ray.train.report(metrics, checkpoint=checkpoint)

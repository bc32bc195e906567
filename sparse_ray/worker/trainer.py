"""The Hugging Face side of a worker: ``SparseEncoderTrainer`` reading this worker's Ray shard,
its training arguments, and model saving for every ZeRO stage.

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
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from torch.utils.data import DataLoader

from sparse_ray.model import STATIC_EMBEDDING_PATTERN, router_mapping
from sparse_ray.worker.feed import timed_collator
from sparse_ray.worker.plan import WorkerPlan
from sparse_ray.worker.state import WorkerState


class ShardTrainer(SparseEncoderTrainer):
    """SparseEncoderTrainer whose train dataloader reads the worker's own Ray shard as is."""

    def __init__(self, *args: Any, worker_state: WorkerState, **kwargs: Any) -> None:
        self.worker_state = worker_state
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        self._train_dataloader = DataLoader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=timed_collator(self.worker_state, self.data_collator, self.model),
            drop_last=True,
            # its own generator: creating an iterator would otherwise draw from the global RNG
            # after a resume restored it, and dropout would differ from the uninterrupted run
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        return self._train_dataloader

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with grad_free_not_inference():
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model in loadable SparseEncoder form, for every ZeRO stage (see ``save_model_files``)."""
        rank = self.accelerator.state.process_index
        save_model_files(self.model, output_dir or self.args.output_dir, zero_stage(self), rank)


@contextlib.contextmanager
def grad_free_not_inference() -> Iterator[None]:
    """Run sentence-transformers' encode under no_grad instead of inference_mode.

    Under ZeRO-3, parameters gathered inside inference_mode become inference tensors, and the next
    training step fails with "Inference tensors cannot be saved for backward".
    """
    original = torch.inference_mode
    torch.inference_mode = lambda mode=True: torch.no_grad() if mode else original(False)
    try:
        yield
    finally:
        torch.inference_mode = original


def zero_stage(trainer: Any) -> int:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def training_args(plan: WorkerPlan, work_dir: str, world: int) -> SparseEncoderTrainingArguments:
    """The trainer's arguments from the plan (steps, the per-device batch of a ``world``-worker
    group, schedule of evaluations and checkpoints)."""
    cfg = plan.config
    train, model = cfg.train, cfg.model
    inference_free = model.type == "inference_free_splade"
    return SparseEncoderTrainingArguments(
        output_dir=work_dir,
        max_steps=plan.max_steps,
        per_device_train_batch_size=plan.device_batch(world),
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        seed=train.seed,
        use_cpu=not plan.use_gpu,
        bf16=use_bf16(plan),
        deepspeed=plan.deepspeed,
        gradient_checkpointing=train.gradient_checkpointing,
        logging_steps=train.logging_steps,
        save_strategy="steps" if train.save_steps and train.save_steps < plan.max_steps else "no",
        save_steps=train.save_steps or plan.max_steps,
        save_total_limit=1,  # local copies only; Ray Train keeps train.keep_checkpoints in storage
        ignore_data_skip=True,  # the row stream skips trained rows itself (no tokenising to skip)
        eval_strategy="steps" if plan.holdout and train.eval_steps < plan.max_steps else "no",
        eval_steps=train.eval_steps,
        per_device_eval_batch_size=plan.device_batch(world),
        report_to=train.trackers,
        ddp_find_unused_parameters=False,
        dataloader_drop_last=True,
        disable_tqdm=True,
        router_mapping=router_mapping(model.type, list(plan.columns)),
        learning_rate_mapping={STATIC_EMBEDDING_PATTERN: train.static_embedding_lr} if inference_free else {},
        run_name=os.path.basename(cfg.output.rstrip("/")) or "sparse-ray",
    )


def use_bf16(plan: WorkerPlan) -> bool:
    """``auto`` means bf16 on GPUs that support it, fp32 elsewhere."""
    return plan.config.cluster.bf16_on(plan.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def save_model_files(model: Any, out: str, zero: int, rank: int) -> None:
    """Write the full model to ``out`` on rank 0 in SparseEncoder form; collective under ZeRO and bf16.

    - DeepSpeed bf16 keeps bf16 copies in the module and the fp32 master weights, partitioned, in
      its optimizer: every rank gathers the masters (``fp32_masters``) and rank 0 saves those, so
      the files are the float32 model a stock ``SparseEncoder(path)`` loads, not a bf16 rounding.
    - ZeRO-3 partitions parameters: every rank enters ``GatheredParameters`` and saves (a save on
      rank 0 alone inside the gather hangs); ranks other than 0 write to a scratch directory.
    - ZeRO-1/2 leave each parameter as a view into a padded flat buffer, which safetensors refuses
      ("no suitable name ... covering the entire storage"): rank 0 saves copies and puts the views
      back, so training can go on after a checkpoint.
    """
    low_precision = zero and any(p.dtype != torch.float32 for p in model.parameters())
    masters = fp32_masters(model) if low_precision else None
    if zero == 3:
        import deepspeed

        target = out if rank == 0 else tempfile.mkdtemp(prefix="sparse-ray-discard-")
        # saving runs a forward (the model card): every rank saves, inside the gather
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if masters is None:
                model.save(target)
            else:
                _save_with(model, masters, target)
        if rank != 0:
            shutil.rmtree(target, ignore_errors=True)
        return
    if rank != 0:
        return
    _save_with(model, masters or [param.data.clone() for param in model.parameters()], out)


def fp32_masters(model: Any) -> list[torch.Tensor]:
    """The full float32 master weight of every parameter, in ``model.parameters()`` order.

    Collective (each call all-reduces the rank's fragment): every rank calls it, in the same
    order. A parameter the optimizer does not own (frozen) has no master: its own value, upcast.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    masters = []
    for param in model.parameters():
        full = safe_get_full_fp32_param(param)
        # kept on the parameter's device: the save's forward meets the buffers there
        masters.append(full.detach() if full is not None else param.detach().float())
    return masters


def _save_with(model: Any, tensors: list[torch.Tensor], out: str) -> None:
    """Save ``model`` with each parameter's data swapped for ``tensors`` (same order), then put the
    training tensors back so training can go on after a checkpoint."""
    saved = [(param, param.data) for param in model.parameters()]
    for (param, _), tensor in zip(saved, tensors, strict=True):
        param.data = tensor
    try:
        model.save(out)
    finally:
        for param, data in saved:
            param.data = data

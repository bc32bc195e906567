"""The per-GPU memory plan of a GPU run, printed before anything trains (``train --dry-run``).

Three parts, in bytes per GPU:

- **model and optimizer states** per ZeRO stage from DeepSpeed's own estimators
  (``estimate_zero2_model_states_mem_needs`` for stages 1 and 2 — stage 1 adds the full 16-bit
  gradients, which stage 2 partitions — and ``estimate_zero3_model_states_mem_needs``; no CPU
  offload). Stage 0 (DDP with bf16 autocast): fp32 parameters, gradients and Adam moments, 16 per
  parameter.
- **encoder activations**: per transformer layer and token ``34 · hidden`` bytes in 16-bit
  (Korthikanti et al. 2022, without the ``s × s`` attention-score term, which SDPA does not keep),
  ``hidden × 2`` (the layer's input) per layer and token with gradient checkpointing, plus one full
  layer; twice all that in fp32.
- **the SPLADE logits**: stock heads hold ``texts × seq × vocab`` about three times (the saved
  relu and log1p outputs and one gradient in the backward); the fused head one ``seq × CHUNK``
  block per text plus ``texts × vocab`` maxima and their int64 positions.

Texts per device and step: ``batch_size × (2 + num_negatives)`` (query, positive, negatives); an
inference-free model's queries skip the encoder. The budget is ``cluster.gpu_memory_gb`` (default
from the GPU type: ``cluster.gpu_type``, else the joined cluster's ``accelerator_type`` resource,
else the local GPU), of which :data:`USABLE` is planned for (CUDA context, NCCL buffers and
allocator fragmentation take the rest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sparse_ray.config import Config
from sparse_ray.errors import ConfigError

GB = 1e9
#: Fraction of a GPU's memory the plan may use.
USABLE = 0.9
#: Memory of the GPU types Ray labels (``accelerator_type:<name>``), in GB. Ray's plain ``A100``
#: label covers 40 and 80 GB cards: the smaller is assumed.
GPU_MEMORY_GB = {
    "A100-80G": 80,
    "A100-40G": 40,
    "A100": 40,
    "H100": 80,
    "H200": 141,
    "B200": 180,
    "A10G": 24,
    "L4": 24,
    "L40S": 48,
    "T4": 16,
    "V100": 16,
}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of the base model (read from its config, no weights)."""

    params: int
    largest_layer_params: int
    layers: int
    hidden: int
    vocab: int


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU at the configured per-device batch, and the largest batch that fits."""

    gpus: int
    zero: int
    batch_size: int
    texts_per_row: int
    states: float
    activations_per_row: float
    logits_per_row: float
    stock_logits_per_row: float
    """What the stock head would need per row (equal to ``logits_per_row`` without the fused head)."""
    budget_gb: float | None
    gpu_type: str | None
    fused_head: bool

    @property
    def total(self) -> float:
        return self.states + self.batch_size * (self.activations_per_row + self.logits_per_row)

    def largest_batch(self, logits_per_row: float | None = None) -> int | None:
        """Rows per device that fit the budget (None without a budget; 0 when the states alone do not)."""
        if self.budget_gb is None:
            return None
        per_row = self.activations_per_row + (self.logits_per_row if logits_per_row is None else logits_per_row)
        return max(0, int((self.budget_gb * GB * USABLE - self.states) // per_row))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "largest_batch": self.largest_batch()}


def model_shape(base_model: str, model_type: str) -> ModelShape:
    """Parameter counts and dimensions of the MLM model at ``base_model``, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    from sparse_ray.offline import load_kwargs

    try:
        config = AutoConfig.from_pretrained(base_model, **load_kwargs(base_model))
    except Exception as exc:  # offline hub id, missing path: the plan is skipped, not the run
        raise ConfigError(f"cannot read the config of {base_model}: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    vocab = int(config.vocab_size)
    if model_type == "inference_free_splade":
        params += vocab  # the query side's SparseStaticEmbedding
    return ModelShape(params, largest, int(config.num_hidden_layers), int(config.hidden_size), vocab)


def states_bytes(shape: ModelShape, zero: int, gpus_per_node: int, nodes: int) -> float:
    """Model + optimizer states per GPU (DeepSpeed's estimators; see the module docstring)."""
    import logging

    logging.disable(logging.WARNING)  # deepspeed's import says it found no GPU: expected on a driver
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    finally:
        logging.disable(logging.NOTSET)
    if zero == 0:
        return 16.0 * shape.params
    if zero == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer_params, gpus_per_node, nodes, cpu_offload=False
        )
        return float(gpu)
    _, gpu = estimate_zero2_model_states_mem_needs(shape.params, gpus_per_node, nodes, cpu_offload=False)
    return float(gpu + (2 * shape.params * (1 - 1 / (gpus_per_node * nodes)) if zero == 1 else 0))


def plan(cfg: Config, shape: ModelShape, budget_gb: float | None, gpu_type: str | None) -> MemoryPlan:
    """The plan of ``cfg``'s run: ``cluster.workers`` GPUs, 8 per node at most (one per worker)."""
    c, seq = cfg.cluster, max(cfg.model.max_seq_length, cfg.train.long_seq_length)
    gpus = c.workers * c.gpus_per_worker
    per_node = min(gpus, 8)
    nbytes = 4 if c.bf16 == "false" else 2
    encoded = (2 if cfg.model.type == "splade" else 1) + cfg.data.num_negatives
    texts = 2 + cfg.data.num_negatives
    layer = 17 * nbytes * seq * shape.hidden  # 34 bytes per hidden unit and token in 16-bit
    if cfg.train.gradient_checkpointing:
        act = shape.layers * seq * shape.hidden * nbytes + layer
    else:
        act = shape.layers * layer
    fused = cfg.model.fused_head and cfg.model.pooling == "max"
    return MemoryPlan(
        gpus=gpus,
        zero=c.zero,
        batch_size=cfg.train.batch_size,
        texts_per_row=texts,
        states=states_bytes(shape, c.zero, per_node, max(1, -(-gpus // per_node))),
        activations_per_row=float(encoded * act),
        logits_per_row=float(encoded * logits_bytes(seq, shape.vocab, nbytes, fused)),
        stock_logits_per_row=float(encoded * logits_bytes(seq, shape.vocab, nbytes, False)),
        budget_gb=budget_gb,
        gpu_type=gpu_type,
        fused_head=fused,
    )


def logits_bytes(seq: int, vocab: int, nbytes: int, fused: bool) -> float:
    """The SPLADE head's memory per text: stock ``3 × seq × vocab``, fused one chunk + maxima."""
    from sparse_ray.fused_head import CHUNK

    if not fused:
        return 3.0 * seq * vocab * nbytes
    return float(seq * min(CHUNK, vocab) * nbytes + vocab * (nbytes + 8))


def budget(cfg: Config, nodes: list[dict[str, float]]) -> tuple[float | None, str | None]:
    """(GB per GPU, GPU type) from the config, the cluster's labels or the local GPU; (None, type) if unknown."""
    gpu_type = cfg.cluster.gpu_type or _labelled_type(nodes) or _local_type()
    if cfg.cluster.gpu_memory_gb:
        return float(cfg.cluster.gpu_memory_gb), gpu_type
    if gpu_type in GPU_MEMORY_GB:
        return float(GPU_MEMORY_GB[gpu_type]), gpu_type
    return _local_memory_gb(), gpu_type


def _labelled_type(nodes: list[dict[str, float]]) -> str | None:
    labels = sorted({k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")})
    return labels[0] if labels else None


def _local_type() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((t for t in sorted(GPU_MEMORY_GB, key=len, reverse=True) if t.split("-")[0] in name), name)


def _local_memory_gb() -> float | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GB if torch.cuda.is_available() else None


def lines(p: MemoryPlan) -> list[str]:
    """The plan as printed: one line per part, then the verdict."""
    gb = lambda x: f"{x / GB:.2f} GB"  # noqa: E731
    per_device = f"{p.batch_size} rows × {p.texts_per_row} texts per device"
    out = [
        f"memory plan per GPU ({p.gpus} GPUs, ZeRO-{p.zero}, {per_device}):",
        f"  model + optimizer states  {gb(p.states)}",
        f"  encoder activations       {gb(p.batch_size * p.activations_per_row)}",
        f"  SPLADE logits ({'fused' if p.fused_head else 'stock'})     {gb(p.batch_size * p.logits_per_row)}",
        f"  total                     {gb(p.total)}",
    ]
    if p.budget_gb is None:
        out.append("  budget unknown: set cluster.gpu_memory_gb or cluster.gpu_type to check the fit")
        return out
    label = f"{p.budget_gb:g} GB{f' ({p.gpu_type})' if p.gpu_type else ''}, {USABLE:.0%} planned"
    out.append(f"  budget                    {label}; largest batch per device {p.largest_batch()}")
    if p.fused_head:
        out[-1] += f" (stock head: {p.largest_batch(p.stock_logits_per_row)})"
    return out


def warning(p: MemoryPlan) -> str | None:
    """One line when the configured batch does not fit the budget."""
    if p.budget_gb is None or p.total <= p.budget_gb * GB * USABLE:
        return None
    return (
        f"warning: the plan needs {p.total / GB:.1f} GB per GPU, over {USABLE:.0%} of "
        f"cluster.gpu_memory_gb={p.budget_gb:g}; the largest batch per device that fits is "
        f"{p.largest_batch()} (train.batch_size={p.batch_size})"
    )

"""The gradient exchange of a DDP worker group (``cluster.zero=0``) under bf16.

Hugging Face's bf16 without DeepSpeed is autocast over float32 parameters, so DDP all-reduces
float32 gradients: twice the bytes of ZeRO's bf16 exchange. With ``cluster.bf16_exchange`` each
of DDP's gradient buckets is cast to bf16, divided by the world size, summed across ranks in bf16
and written back into the float32 bucket, from DDP's own hook, so the exchange still overlaps the
backward pass. The update is then the float32 mean rounded to bf16 precision (relative error
≤ 2⁻⁸ per rank's share), the precision ZeRO's bf16 exchange has too.

PyTorch's ``bf16_compress_hook`` does this on NCCL and XCCL only (it refuses gloo, the CPU
backend); this hook is backend-agnostic, so CPU and GPU groups take the same path. (No
``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.)
"""

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from accelerate.utils import DistributedDataParallelKwargs


def bf16_allreduce_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's mean over ranks, exchanged in bf16 (``state`` unused)."""
    compressed = bucket.buffer().to(torch.bfloat16).div_(dist.get_world_size())
    future = dist.all_reduce(compressed, async_op=True).get_future()

    def decompress(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        buffer = bucket.buffer()
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(decompress)


@dataclasses.dataclass
class Bf16ExchangeKwargs(DistributedDataParallelKwargs):
    """Accelerate's DDP settings whose hook is :func:`bf16_allreduce_hook`; ``registered`` says
    whether accelerate wrapped a model in DDP and installed it (a one-process group is not wrapped)."""

    registered: bool = False

    def to_dict(self, ignore_keys: tuple[str, ...] = ("comm_hook", "comm_wrapper", "comm_state_option")) -> dict:
        return {k: v for k, v in super().to_dict(ignore_keys).items() if k != "registered"}

    def register_comm_hook(self, model: torch.nn.parallel.DistributedDataParallel) -> None:
        model.register_comm_hook(state=None, hook=bf16_allreduce_hook)
        self.registered = True


def with_bf16_exchange(handler: DistributedDataParallelKwargs | None) -> Bf16ExchangeKwargs:
    """``handler``'s DDP settings (bucket size, unused parameters, ...) with the bf16 exchange."""
    fields = dataclasses.fields(DistributedDataParallelKwargs)
    return Bf16ExchangeKwargs(**({f.name: getattr(handler, f.name) for f in fields} if handler else {}))

"""The bf16 gradient exchange of DDP groups (``worker/exchange.py``) under real gloo process groups."""

from __future__ import annotations

import torch
from gloo import run_ranks

from sparse_ray.worker.exchange import Bf16ExchangeKwargs, with_bf16_exchange


def _grads(rank: int, world: int, hooked: bool) -> list[list[float]]:
    """Each rank's gradient after one DDP backward on its own rows, and its own rows' gradient alone."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    handler = with_bf16_exchange(None)
    if hooked:
        handler.register_comm_hook(ddp)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(rank + 1))
    local = torch.autograd.grad(model(x).sum(), list(model.parameters()))  # this rank's share, no exchange
    ddp(x).sum().backward()
    return [
        torch.cat([p.grad.flatten() for p in model.parameters()]).tolist(),
        torch.cat([g.flatten() for g in local]).tolist(),
        handler.registered,
    ]


def test_ddp_exchanges_gradients_in_bf16_and_averages_them():
    hooked = run_ranks(_grads, 2, True)
    (g0, local0, on), (g1, local1, _) = hooked
    assert on, "the handler installed its hook"
    assert g0 == g1, "every rank applies the same update"
    l0, l1 = torch.tensor(local0), torch.tensor(local1)
    got, exact = torch.tensor(g0), (l0 + l1) / 2
    assert torch.equal(got, got.bfloat16().float()), "the gradients crossed in bf16"
    assert not torch.equal(got, exact)
    # each rank's half rounded to bf16 (2^-9 relative), their sum rounded again: the error is
    # bounded by the halves' magnitudes (they may cancel), not by the mean's
    bound = 2**-8 * (l0.abs() + l1.abs()) / 2 + 2**-8 * exact.abs()
    assert bool(((got - exact).abs() <= bound).all()), ((got - exact).abs() / bound).max()
    plain = run_ranks(_grads, 2, False)[0][0]  # DDP's own float32 all-reduce: the exact mean
    assert torch.allclose(torch.tensor(plain), exact, rtol=1e-6, atol=1e-7)
    assert not torch.equal(torch.tensor(plain), torch.tensor(plain).bfloat16().float())


def test_the_handler_keeps_the_ddp_settings_and_passes_accelerate_only_ddp_arguments():
    from accelerate.utils import DistributedDataParallelKwargs

    handler = with_bf16_exchange(DistributedDataParallelKwargs(find_unused_parameters=True, bucket_cap_mb=50))
    assert isinstance(handler, Bf16ExchangeKwargs) and not handler.registered
    assert handler.to_kwargs() == {"find_unused_parameters": True, "bucket_cap_mb": 50}

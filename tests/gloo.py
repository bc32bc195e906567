"""Real gloo process groups in local processes, for unit tests of rank logic (no Ray needed).

``run_ranks(fn, world, *args)`` starts ``world`` spawned processes, each joins one gloo group over
loopback and calls ``fn(rank, world, *args)``; returns the results in rank order, or raises with
the failing rank's traceback. ``fn`` must be a module-level function (it is pickled by name).
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn: Any, rank: int, world: int, port: int, out: Any, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        out.put((rank, fn(rank, world, *args), None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        out.put((rank, None, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Any, world: int, *args: Any, timeout: float = 300) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(fn, rank, world, port, out, args), daemon=True) for rank in range(world)]
    for proc in procs:
        proc.start()
    try:
        got = dict((rank, (result, error)) for rank, result, error in (out.get(timeout=timeout) for _ in procs))
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [f"rank {rank}:\n{error}" for rank, (_, error) in sorted(got.items()) if error]
    if errors:
        raise AssertionError("\n".join(errors))
    return [got[rank][0] for rank in range(world)]

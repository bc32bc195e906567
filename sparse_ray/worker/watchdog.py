"""Worker side: fail a stalled run, naming the stage it stalled in, instead of hanging.

The train loop marks what the main thread is doing: ``data`` (waiting for rows from Ray Data),
``collective`` (inside a torch.distributed / DeepSpeed collective called from Python) and ``step``
(everything else in a training step). A thread checks that a training step finished within
``timeout`` seconds. When one did not, it

1. writes a one-line record (rank, host, stage, seconds) where the driver can read it,
2. raises :class:`StallError` in the thread that created the watchdog: the training thread (Ray
   Train runs the train function in a thread of its own, not in the process's main thread); it
   takes effect as soon as that thread runs Python code again, e.g. while polling Ray Data,
3. and, if the main thread is still stuck in native code (a gloo/NCCL collective) after a grace
   period, exits the process so Ray Train sees the worker fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any

#: Seconds the start-up stage may take before it counts as a stall, whatever ``timeout`` is.
START_ALLOWANCE_S = 600.0
#: Extra seconds a rank waiting in a collective gives the rank it waits for: that rank's own stall
#: (in data, say) is the cause, so it must be the first to trip and write its record.
COLLECTIVE_GRACE_S = 5.0
#: Exit status of a worker the watchdog had to kill (stuck in native code).
STALL_EXIT = 75
#: Python-level collectives watched, by module: torch.distributed and DeepSpeed's comm layer.
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce_scatter_fn",
    "allgather_fn",
    "broadcast",
    "barrier",
)
#: What each stage means in the message users see (read-only).
STAGE_TEXT = MappingProxyType(
    {
        "start": "start-up (model, DeepSpeed and data set-up before the first step)",
        "data": "data: waiting for rows from Ray Data",
        "tokenize": "tokenize: the data collator tokenising a batch",
        "collective": "collective: waiting for the other workers",
        "step": "step: forward/backward/optimizer",
    }
)


#: Why the first batch can take long (a pipeline that is slow to start, not a dead one).
FIRST_BATCH_TEXT = (
    "it waits until every data slot's shuffle buffer (data.shuffle_buffer rows per language) has "
    "filled, after any teacher model has scored those rows; for a slow pipeline start raise "
    "train.stall_timeout or train.teacher_replicas"
)


class StallError(RuntimeError):
    """No training step finished within the watchdog's timeout."""


class Watchdog:
    """Tracks the current stage and the last finished step; see the module docstring."""

    def __init__(self, timeout: float, rank: int, record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.timeout = timeout
        self.rank = rank
        self.record = record
        self.stage = "start"
        self.detail = ""
        self.last_step = time.monotonic()
        self.steps = 0
        self.tripped: str | None = None
        #: Seconds spent in each marked stage (outermost mark only), for the step-time breakdown.
        self.spent: dict[str, float] = {"data": 0.0, "tokenize": 0.0, "collective": 0.0}
        #: The same seconds split by what the stage was doing (its detail), e.g. which collective.
        self.by_call: dict[str, float] = {}
        self._main = threading.get_ident()  # the training thread (see the module docstring)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparse-ray-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.timeout > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self, step: bool = True) -> None:
        """A training step finished (``step``) or training began: the clock starts there."""
        self.last_step = time.monotonic()
        self.steps += int(step)
        self.stage, self.detail = "step", ""

    @contextlib.contextmanager
    def stage_of(self, stage: str, detail: str = "") -> Iterator[None]:
        """Mark the main thread as being in ``stage`` for the duration of the block."""
        before = (self.stage, self.detail)
        self.stage, self.detail = stage, detail
        began = time.perf_counter()
        try:
            yield
        finally:
            if before[0] not in self.spent:  # nested marks count once, for the outer stage
                took = time.perf_counter() - began
                self.spent[stage] = self.spent.get(stage, 0.0) + took
                if detail:  # and per call ("collective:all_reduce"), for the benchmark's breakdown
                    key = f"{stage}:{detail}"
                    self.by_call[key] = self.by_call.get(key, 0.0) + took
            self.stage, self.detail = before

    def watch_collectives(self, *modules: Any) -> None:
        """Mark every call of the known collectives in ``modules`` as the ``collective`` stage."""
        for module in modules:
            for name in COLLECTIVES:
                original = getattr(module, name, None)
                if original is None or getattr(original, "_sparse_ray_watched", False):
                    continue
                setattr(module, name, self._wrap(original, name))

    def _wrap(self, original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if self.stage == "collective":  # nested (DeepSpeed calling torch): keep the outer name
                return original(*args, **kwargs)
            with self.stage_of("collective", name):
                return original(*args, **kwargs)

        watched._sparse_ray_watched = True  # type: ignore[attr-defined]
        return watched

    def message(self, waited: float) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        if self.stage == "data" and not self.steps:
            detail += f" before the first step: {FIRST_BATCH_TEXT}"
        return (
            f"rank {self.rank} on {socket.gethostname()}: no training step finished in {waited:.0f}s "
            f"(train.stall_timeout={self.timeout:g}); stalled in {STAGE_TEXT.get(self.stage, self.stage)}{detail}"
        )

    def _run(self) -> None:
        poll = min(1.0, self.timeout / 10)
        while not self._stop.wait(poll):
            waited = time.monotonic() - self.last_step
            # start-up (model load, DeepSpeed init and op compilation) gets at least START_ALLOWANCE_S
            limit = max(self.timeout, START_ALLOWANCE_S) if self.stage == "start" else self.timeout
            limit += COLLECTIVE_GRACE_S if self.stage == "collective" else 0.0
            if waited > limit:
                self._trip(waited)
                return

    def _trip(self, waited: float) -> None:
        self.tripped = self.message(waited)
        if self.record is not None:
            with contextlib.suppress(Exception):
                self.record({"rank": self.rank, "stage": self.stage, "detail": self.detail, "message": self.tripped})
        error = type("StallError", (StallError,), {"__str__": lambda _self, m=self.tripped: m})
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), ctypes.py_object(error))
        if not self._stop.wait(max(10.0, min(60.0, self.timeout))):
            sys.stderr.write(f"[sparse-ray watchdog] {self.tripped}; the process is stuck in native code, exiting\n")
            sys.stderr.flush()
            os._exit(STALL_EXIT)

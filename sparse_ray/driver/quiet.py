"""The driver's console: Ray's own lines that tell a user nothing they can act on stay out of it.

Each pattern below was seen in ``make demo`` (Ray 2.60) and is either internal bookkeeping or
repeats what the project prints itself. Real warnings and errors pass untouched; the full text of
every line stays in Ray's log files (``/tmp/ray/session_*/logs``).
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from typing import Any

#: Lines forwarded from Ray's processes that are dropped from the driver's console.
NOISE = re.compile(
    "|".join(
        (
            # Train controller, E-level but not actionable: the watcher's constructor args live in the object store
            r"core_worker\.cc.*'PreemptionWatcher'.*constructor arguments in the object store",
            r"Progress bars disabled\. To enable",  # Ray Data's split coordinator
            r"Dataset \S+ execution finished in",
            r"Setting up process group for: env://",  # every Train worker
            r"Reporting training result \d+: TrainingReport",  # the whole metrics dict, per rank
            r"Checkpoint successfully created at: Checkpoint",  # our own line says it per checkpoint
            r"^Saving model to ",  # sentence-transformers, per save
        )
    )
)


def quiet_ray() -> None:
    """Ray Data's progress logs off, and Ray's non-actionable lines filtered (call after ``ray.init``)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data's own default for ExecutionOptions still sets the deprecated field
    warnings.filterwarnings("ignore", message=r".*exclude_resources.*is deprecated")
    _filter_forwarded_lines()


def _filter_forwarded_lines() -> None:
    """Wrap the handler that prints lines forwarded from Ray's processes (once per process)."""
    from ray._private import worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    handler = dict(getattr(dispatcher, "handlers", [])).get("ray_print_logs")
    if handler is None or getattr(handler, "_sparse_ray_filtered", False):
        return  # nothing forwarded (log_to_driver off), or filtered already
    filtered = functools.partial(_drop_noise, handler)
    filtered._sparse_ray_filtered = True  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)


def _drop_noise(handler: Any, data: dict[str, Any]) -> None:
    lines = [line for line in data.get("lines", []) if not NOISE.search(_strip_ansi(line))]
    if lines:
        handler({**data, "lines": lines})


def _strip_ansi(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)

"""Elastic worker groups on the driver: Ray Train's elastic scaling, held to the sizes the data
slots allow (``Config.worker_sizes``), and bounded when the cluster stays below the minimum.

Ray Train 2.60 (``ScalingConfig(num_workers=(min, max))``) restarts the group at whatever size the
cluster can hold between min and max. A global batch of G rows in S data slots can only be shared
by a worker count that divides S (``data/slots.py``), so :class:`SlotScalingPolicy` rounds each
decision down to the largest allowed size. Ray waits without limit while fewer than ``min``
workers fit; the policy fails the run after ``cluster.wait_for_workers`` seconds instead.
"""

from __future__ import annotations

import time
from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy, NoopDecision


class SlotScalingPolicy(ElasticScalingPolicy):
    """Ray Train's elastic policy restricted to ``sizes`` (ascending), failing after ``wait_s``
    seconds without enough capacity for the smallest one."""

    def __init__(self, scaling_config: Any, sizes: list[int], wait_s: float) -> None:
        super().__init__(scaling_config)
        self.sizes = sizes
        self.wait_s = wait_s
        self.waiting_since: float | None = None

    def _count_possible_workers(self, reserved_resources: Any) -> int:
        fits = super()._count_possible_workers(reserved_resources)
        return max((s for s in self.sizes if s <= fits), default=0)

    def make_decision_for_non_running_worker_group(self) -> Any:
        decision = super().make_decision_for_non_running_worker_group()
        if not isinstance(decision, NoopDecision):
            self.waiting_since = None
            return decision
        self.waiting_since = self.waiting_since or time.monotonic()
        if time.monotonic() - self.waiting_since > self.wait_s:
            raise RuntimeError(
                f"WorkersUnavailable: the cluster has not had room for {self.sizes[0]} workers "
                f"(the minimum) for {self.wait_s:.0f}s"
            )
        return decision


class SlotTrainer(TorchTrainer):
    """``TorchTrainer`` whose elastic runs use :class:`SlotScalingPolicy` (a fixed run is unchanged)."""

    def __init__(self, *args: Any, sizes: list[int], wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes, self._wait_s = sizes, wait_s

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        if isinstance(controller_init_kwargs.get("scaling_policy"), ElasticScalingPolicy):
            controller_init_kwargs["scaling_policy"] = SlotScalingPolicy(self.scaling_config, self._sizes, self._wait_s)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

"""Code that runs inside Ray Train workers: the train loop and what it shares.

Imports nothing from ``driver``, ``tools`` or ``cli`` (an import-linter contract), and holds no
module-level mutable state: everything a worker shares lives in one :class:`~sparse_ray.worker.state.WorkerState`.
"""

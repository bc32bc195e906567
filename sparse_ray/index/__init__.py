"""Serving what was trained: sparse vectors on disk, an exact and an approximate (Seismic) index,
search with token-level explanations, and exports for other engines.

Shared by the CLI, the driver's encode job and the benchmarks; it imports no process package.
"""

from sparse_ray.index.search import Hit, Index

__all__ = ["Hit", "Index"]

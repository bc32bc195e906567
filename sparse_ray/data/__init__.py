"""The data path: CornStack rows (contract and Ray datasource), where shards live, the Ray Data
pipeline, the step plan, and the worker-side batcher. Imports nothing from ``driver``, ``worker`` or
``tools`` (an import-linter contract)."""

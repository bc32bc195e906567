"""The process layout's rules that import-linter cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parent.parent / "sparse_ray" / "worker"
MUTABLE_CALLS = {"dict", "list", "set", "Counter", "defaultdict", "deque", "OrderedDict"}


def _mutable_globals(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        value = node.value
        name = getattr(value.func, "id", getattr(value.func, "attr", "")) if isinstance(value, ast.Call) else ""
        call = name in MUTABLE_CALLS
        if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or call:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_worker_modules_hold_no_module_level_mutable_state():
    modules = sorted(WORKER.glob("*.py"))
    assert len(modules) >= 8, "the worker package moved"
    found = [hit for path in modules for hit in _mutable_globals(path)]
    assert not found, f"module-level mutable state in worker/ (put it in WorkerState): {found}"


def test_the_check_sees_a_module_level_dict(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from collections import Counter\n_FED = Counter()\nTIMING: dict = {}\nNAME = 'x'\n")
    assert _mutable_globals(probe) == ["probe.py:2", "probe.py:3"]

"""The shape of the code: layers import downwards only, no module imports itself back through others,
and TRL's private internals are touched in one module. Read from the source (every import, at module
level or inside a function), so a violation fails here before it confuses a reader."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
# policies (models, engines, chat) <- reward <- rl (learner, rollouts, actors, sync, data) <- recipes (+ CLI)
LAYERS = {"policies": 0, "reward": 1, "rl": 2, "recipes": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports (`from a import b` names a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_lower_layers_never_import_upper_ones():
    upward = [f"{a} imports {b}" for a, targets in _graph().items() for b in targets
              if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]]
    assert not upward, upward


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_trl_private_internals_are_touched_in_one_module():
    pattern = re.compile(r"\._metrics|_save_checkpoint|sampler\.__class__")
    touching = sorted(str(p.relative_to(ROOT)) for folder in (*LAYERS, "tests", "benchmarks")
                      for p in (ROOT / folder).rglob("*.py") if p != Path(__file__) and pattern.search(p.read_text()))
    assert touching == ["rl/trl_adapter.py"]


def test_the_trl_adapter_refuses_another_trl_version():
    import pytest

    from rl.trl_adapter import check_trl_version

    check_trl_version("1.16.3")
    with pytest.raises(RuntimeError, match=r"written against TRL 1\.16\.x and TRL 1\.17\.0 is installed"):
        check_trl_version("1.17.0")

"""The shape of the code: layers import downwards only, no module imports itself back through others,
each library's private internals are touched in one module (adapters/), and no free function is run
inside a Ray actor. Read from the source (every import, at module level or inside a function), so a
violation fails here before it confuses a reader."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# adapters (other libraries' internals) <- policies (models, engines, chat) <- reward <- rl (configs, data, the
# learner, checkpoints) <- evaluation (policies and reward models on held-out rows and benchmarks) <- pipeline
# (placement, actors, rollouts, weight sync, the distributed learner) <- recipes
LAYERS = {"adapters": 0, "policies": 1, "reward": 2, "rl": 3, "evaluation": 4, "pipeline": 5, "recipes": 6}
SOURCES = (*LAYERS, "tests", "benchmarks")


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
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            }
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_lower_layers_never_import_upper_ones():
    upward = [
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets
        if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]
    ]
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


# A library's private internals -> the one module allowed to touch them.
PRIVATE = {
    "adapters/trl.py": r"\._metrics\b|_save_checkpoint|sampler\.__class__|PartialState\._shared_state",
    "adapters/torch.py": r"_share_filename_cpu_|_new_shared_filename_cpu|_new_using_filename_cpu|"
    r"multiprocessing\.reductions|options\._timeout|distributed_c10d",
    "adapters/transformers.py": r"_process_images|\._defaults\b|transformers\.initialization|replace_image_token|"
    r"get_text_with_replacements",
    "adapters/vllm.py": r"Factory\._registry|\.engine_core\b",
}


def _touching(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(
        str(p.relative_to(ROOT))
        for folder in SOURCES
        for p in (ROOT / folder).rglob("*.py")
        if p != Path(__file__) and regex.search(p.read_text())
    )


@pytest.mark.parametrize("adapter", sorted(PRIVATE))
def test_each_librarys_private_internals_are_touched_in_its_adapter_only(adapter):
    assert _touching(PRIVATE[adapter]) == [adapter]


def test_no_free_function_runs_inside_an_actor():
    """What runs inside an actor is a method of its hosted class or of the mixins its spawn declares."""
    assert _touching(r"__ray_call__") == []


def test_loading_a_config_imports_no_torch():
    """Configs are checked (and refused) before any model library loads: `rl.config` and the option
    dataclasses it is built from import no torch, transformers, TRL or Ray."""
    code = (
        "import sys, rl.config; print(sorted(m for m in ('torch', 'transformers', 'trl', 'ray', 'vllm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_trl_adapter_refuses_another_trl_version():
    from adapters.trl import check_trl_version

    check_trl_version("1.16.3")
    with pytest.raises(RuntimeError, match=r"written against TRL 1\.16\.x and TRL 1\.17\.0 is installed"):
        check_trl_version("1.17.0")

"""Artifacts the xdist workers share: built once per test session, not once per worker (a module of its own:
tests/gpu has a conftest too, so `from conftest import ...` is ambiguous)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def built_once(tmp_path_factory: Any, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)`'s result (JSON), run by the first worker that asks, under a lock, and read back by the
    others: the tiny models and the trained warm-up policy and judge are deterministic, and each worker
    building its own cost the suite about two minutes of its two cores. The folder is this session's (xdist
    workers' base temp folders share a parent, pytest-N/popen-gwK; a plain run has its own base temp)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)
    result = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():  # a worker whose build failed left none: the next one builds it again
            folder = root / name
            folder.mkdir(exist_ok=True)
            result.write_text(json.dumps(build(folder)))
        return json.loads(result.read_text())

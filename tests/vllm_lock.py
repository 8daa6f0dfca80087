"""The lock vLLM tests hold across pytest-xdist workers (a module of its own: tests/gpu has a conftest too,
so `from conftest import ...` is ambiguous)."""

from __future__ import annotations

from typing import Any


def vllm_lock(tmp_path_factory: Any) -> Any:
    """vLLM engines' queues are POSIX shared memory (`/dev/shm/psm_*`), one machine-wide namespace, so a test
    that checks its engine left none behind cannot tell its own from those of an engine another worker starts
    at the same moment. (xdist workers' base temp folders share a parent, pytest-N/popen-gwK; a plain run has
    one process.)"""
    from filelock import FileLock

    return FileLock(str(tmp_path_factory.getbasetemp().parent / "vllm-tests.lock"))

"""What vLLM tests share across pytest-xdist workers: one lock, and a way to tell leaked shared-memory queues
from live ones (a module of its own: tests/gpu has a conftest too, so `from conftest import ...` is
ambiguous)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def vllm_lock(tmp_path_factory: Any) -> Any:
    """vLLM engines' queues are POSIX shared memory (`/dev/shm/psm_*`), one machine-wide namespace. A test that
    checks its engine left none behind tells live queues from leaked ones (`leaked_queues`), but not its own
    leaks from those of an engine another worker's test SIGKILLs on purpose (the restart tests) at the same
    moment: so vLLM tests run one at a time. (xdist workers' base temp folders share a parent,
    pytest-N/popen-gwK; a plain run has one process.)"""
    from filelock import FileLock

    return FileLock(str(tmp_path_factory.getbasetemp().parent / "vllm-tests.lock"))


def shared_memory_queues() -> set[Path]:
    """POSIX shared memory made by Python's `multiprocessing.shared_memory` (vLLM's queues among them)."""
    return set(Path("/dev/shm").glob("psm_*"))


def leaked_queues(before: set[Path]) -> set[Path]:
    """Queues made since `before` that no live process maps: leaked RAM nobody can free. One still mapped
    belongs to a running engine (another xdist worker's, say), not to a test's engine that has stopped."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(
                line.rsplit(" ", 1)[-1].strip() for line in maps.read_text().splitlines() if "/dev/shm/psm_" in line
            )
        except OSError:  # the process ended while we looked
            continue
    return {queue for queue in shared_memory_queues() - before if str(queue) not in mapped}

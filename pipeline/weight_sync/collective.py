"""A process group between the learner and its rollout actors, apart from any other torch.distributed
state (a distributed learner's own default group included), and a watched round on it.

The group is formed without torch.distributed's global state: a TCPStore served by the learner (rank
0, on a port the OS picks) and a gloo or NCCL backend object used directly, so it can be opened,
re-formed after an actor restart and closed any number of times in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch.distributed import BroadcastOptions, PrefixStore, TCPStore

from adapters.torch import process_group

log = logging.getLogger(__name__)
GROUP_BACKENDS = ("nccl", "gloo")  # the process groups this module forms


def serve_store(host: str, world_size: int, timeout: timedelta) -> TCPStore:
    """The learner's rendezvous store (rank 0) on a free port (`.port`); peers connect with `join_store`."""
    return TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False, timeout=timeout)


def join_store(host: str, port: int, world_size: int, timeout: timedelta) -> TCPStore:
    return TCPStore(host, port, world_size, is_master=False, timeout=timeout)


def open_group(backend: str, store: TCPStore, name: str, rank: int, world_size: int, timeout: timedelta) -> Any:
    """A gloo or NCCL process group (the backend object itself) over `store`, namespaced by `name`."""
    if backend not in GROUP_BACKENDS:
        raise ValueError(f"backend must be one of {GROUP_BACKENDS}, got {backend!r}")
    return process_group(backend, PrefixStore(name, store), rank, world_size, timeout)


def broadcast(group: Any, tensor: torch.Tensor, src: int = 0) -> None:
    """Broadcast `tensor` from group rank `src`; returns once the round is complete on this side. An NCCL
    `wait()` only orders the current CUDA stream after the collective and returns to the CPU at once, so
    the stream is synchronised too: the caller's thread (`watched`) then waits for the round itself, and a
    dead peer shows as a round that does not finish rather than as a stream blocked behind later work."""
    options = BroadcastOptions()
    options.rootRank = src  # a group rank: the group has no global ranks
    group.broadcast([tensor], options).wait()
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


def close_group(group: Any) -> None:
    try:
        group.shutdown()
    except Exception:  # noqa: BLE001 - a group whose peer died may refuse a clean shutdown; it is dropped either way
        pass


def abort_group(group: Any) -> None:
    """Drop a group whose round broke. NCCL: `abort()` tears the communicator down and ends the kernels
    still waiting on a dead peer, so the learner's stream (the checkpoint a stopping run writes, the next
    sync's group) is not queued behind them until the NCCL watchdog kills the process. A backend without
    an abort (gloo: its ops time out on their own) is shut down."""
    abort = getattr(group, "abort", None)
    try:
        if callable(abort):
            abort()
            return
    except Exception:  # noqa: BLE001 - gloo's Backend.abort may be unimplemented: shut down instead
        pass
    close_group(group)


def watched(send: Callable[[], None], failed: Callable[[], str | None], timeout_s: float, what: str) -> None:
    """Run `send` (the learner's side of a collective round) on a daemon thread while this thread
    watches the peers: `failed()` names a peer whose side ended in an error (its process died). An NCCL
    collective has no timeout of its own and waits forever for a dead peer, so a round is bounded here:
    RuntimeError for a dead peer, TimeoutError past `timeout_s`; the blocked thread is left behind."""
    done, errors = threading.Event(), []

    def run() -> None:
        try:
            send()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.1):
        dead = failed()
        if dead is not None:
            raise RuntimeError(f"{dead} died during {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s")
    if errors:
        raise errors[0]


def failed_ref(refs: list[Any]) -> int | None:
    """The index of the first of `refs` (ObjectRefs) that finished with an error, if any (no waiting)."""
    import ray
    from ray.exceptions import RayError

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except RayError:
            return refs.index(ref)
    return None


def unfinished(refs: list[Any]) -> list[int]:
    """The indices of `refs` (ObjectRefs) whose calls have not returned yet (no waiting)."""
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    return [i for i, ref in enumerate(refs) if ref not in ready]


def kill_stuck(actors: list[Any], stuck: list[int], what: str) -> None:
    """Kill the actors left blocked in a broken round (`stuck`: their indices). Their receive returns only
    at the group's timeout (an NCCL one: never), and their stop() would queue behind it: stop_actors
    would wait out its own timeout and kill them anyway, so this does it when the round's owner closes."""
    import ray

    for i in stuck:
        log.warning("rollout actor %d is still blocked in the broken %s round: killing it", i, what)
        ray.kill(actors[i], no_restart=True)

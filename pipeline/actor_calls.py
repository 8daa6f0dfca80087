"""Calling a group of actors: fan work out, gather it back in order, with timeouts and restarts.

Sharding is contiguous, so order is kept by concatenation; every wait has a timeout, so a hung
actor is an error, never a hang. An actor whose process dies is restarted by Ray (`max_restarts`;
its constructor reloads the policy or the reward checkpoint); `ActorCalls.run` then lets the caller
restore what the actor had (a rollout actor gets the weights version it held again) and re-issues
only that actor's share. The work is idempotent (a share's sampling seed is fixed), so a sample is
neither lost nor counted twice. Past `max_retries` per call it raises `ActorFailureError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rl.errors import ActorFailureError

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard(items: Sequence[T], k: int) -> list[list[T]]:
    """Split into k contiguous, near-equal parts (earlier parts get the remainder); some may be empty."""
    if k < 1:
        raise ValueError("need at least one shard")
    size, extra = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def gather(refs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """`ray.get` with a timeout that names what was waited for."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise TimeoutError(f"{what}: no answer within {timeout_s:.0f}s") from None


class ActorCalls:
    """Calls on a fixed list of actors that survive an actor's death (see the module docstring)."""

    def __init__(self, actors: list[Any], timeout_s: float, max_retries: int, what: str):
        if not actors:
            raise ValueError(f"{what}: need at least one actor")
        self.actors = actors
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.what = what
        self.restarts = 0  # actor deaths recovered from, over the group's life

    def run(
        self, submit: Callable[[int], Any], indices: Sequence[int], restore: Callable[[int], None] | None = None
    ) -> list[Any]:
        """`submit(i)` -> an ObjectRef of work on actor i, for each i in `indices`; results in that order."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        refs = {i: submit(i) for i in indices}
        results: dict[int, Any] = {}
        retries = 0
        for i in indices:
            while i not in results:
                try:
                    results[i] = ray.get(refs[i], timeout=self.timeout_s)
                except GetTimeoutError:
                    raise TimeoutError(f"{self.what}: actor {i} gave no answer within {self.timeout_s:.0f}s") from None
                except RayActorError as e:  # the process died (ActorDiedError) or is unreachable
                    retries += 1
                    if retries > self.max_retries:
                        raise ActorFailureError(
                            f"{self.what}: actor {i} died and the retry budget "
                            f"(max_retries={self.max_retries}) is spent: {e}"
                        ) from e
                    log.warning(
                        "%s: actor %d died (%s); waiting for Ray to restart it, then retrying its "
                        "share (retry %d of %d)",
                        self.what,
                        i,
                        type(e).__name__,
                        retries,
                        self.max_retries,
                    )
                    self.await_restart(i)
                    self.restarts += 1
                    if restore is not None:
                        restore(i)
                    refs[i] = submit(i)
        return [results[i] for i in indices]

    def all(self, submit: Callable[[int], Any], what: str) -> list[Any]:
        """`submit(i)` on every actor at once, then wait for all (no retries: for calls whose
        failure the caller handles, like one round of a collective)."""
        return gather([submit(i) for i in range(len(self.actors))], self.timeout_s, f"{self.what} ({what})")

    def pids(self) -> list[int]:
        """Every actor's process id, asked at once; a dead or restarting actor is waited for."""
        import ray
        from ray.exceptions import RayActorError

        pids = []
        for i, ref in enumerate([actor.pid.remote() for actor in self.actors]):
            try:
                pids.append(ray.get(ref, timeout=self.timeout_s))
            except RayActorError:  # dead or restarting: wait for Ray's restart (ActorFailureError if none)
                pids.append(self.await_restart(i))
        return pids

    def restarted_since(self, pids: list[int]) -> list[int]:
        """The actors whose process is no longer the one in `pids` (recorded when a weight-sync group formed):
        Ray restarted them since, so they lost their place in that group. Counted in `restarts`."""
        restarted = [i for i, (old, new) in enumerate(zip(pids, self.pids(), strict=True)) if old != new]
        self.restarts += len(restarted)
        return restarted

    def await_restart(self, i: int) -> int:
        """Block until Ray has restarted actor i (its constructor has run again), within the timeout;
        returns its new pid."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                pid = ray.get(self.actors[i].pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError:  # still restarting: Ray refuses calls meanwhile
                if time.monotonic() > deadline:
                    raise ActorFailureError(
                        f"{self.what}: actor {i} was not back within {self.timeout_s:.0f}s"
                    ) from None
                time.sleep(0.2)
            except (RayActorError, GetTimeoutError) as e:
                raise ActorFailureError(
                    f"{self.what}: actor {i} could not be restarted (its max_restarts may be "
                    f"spent, or its constructor failed): {e}"
                ) from e
        log.info("%s: actor %d is back (pid %d)", self.what, i, pid)
        return pid

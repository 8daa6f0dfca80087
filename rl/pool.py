"""Fan work out to groups of actors and gather it back in order, with timeouts and restarts.

`RolloutPool` drives the rollout actors (generation, weight sync, versions); `RemoteReward` makes a
reward hosted on actors look like a local TRL reward function. Sharding is contiguous, so order is
kept by concatenation; every wait has a timeout, so a hung actor is an error, never a hang.

An actor whose process dies is restarted by Ray (`max_restarts`; its constructor reloads the policy
or the reward checkpoint); the pool then restores what the actor had (a rollout actor gets the
weights version it held again) and re-issues only that actor's shard. The work is idempotent: a
shard's sampling seed is fixed, so the retried shard yields the same rollouts, and a sample is
neither lost nor counted twice. Past `max_retries` per call the pool raises `ActorFailureError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from policies.engine import Rollout, RolloutRequest, SamplingParams
from reward.base import slice_columns
from rl.errors import ActorFailureError

__all__ = ["ActorCalls", "ActorFailureError", "RemoteReward", "RolloutPool", "shard"]

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


def _gather(refs: list[Any], timeout_s: float, what: str) -> list[Any]:
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
        self.restarts = 0  # actor deaths recovered from, over the pool's life

    def run(self, submit: Callable[[int], Any], indices: Sequence[int],
            restore: Callable[[int], None] | None = None) -> list[Any]:
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
                        raise ActorFailureError(f"{self.what}: actor {i} died and the retry budget "
                                                f"(max_retries={self.max_retries}) is spent: {e}") from e
                    log.warning("%s: actor %d died (%s); waiting for Ray to restart it, then retrying its "
                                "share (retry %d of %d)", self.what, i, type(e).__name__, retries, self.max_retries)
                    self._await_restart(i)
                    self.restarts += 1
                    if restore is not None:
                        restore(i)
                    refs[i] = submit(i)
        return [results[i] for i in indices]

    def _await_restart(self, i: int) -> None:
        """Block until Ray has restarted actor i (its constructor has run again), within the timeout."""
        import time

        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                pid = ray.get(self.actors[i].pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError:  # still restarting: Ray refuses calls meanwhile
                if time.monotonic() > deadline:
                    raise ActorFailureError(f"{self.what}: actor {i} was not back within {self.timeout_s:.0f}s") from None
                time.sleep(0.2)
            except (RayActorError, GetTimeoutError) as e:
                raise ActorFailureError(f"{self.what}: actor {i} could not be restarted (its max_restarts may be "
                                        f"spent, or its constructor failed): {e}") from e
        log.info("%s: actor %d is back (pid %d)", self.what, i, pid)


class RolloutPool:
    """N rollout actors, each hosting a RolloutEngine.

    Weights travel through Ray's object store, or, with `weight_transfer` ("nccl" on GPUs, "gloo"
    its CPU twin; vLLM engines only), through vLLM's weight-transfer engine (`rl.transfer`).
    """

    def __init__(self, actors: list[Any], timeout_s: float = 600.0, max_retries: int = 2,
                 weight_transfer: str | None = None):
        self.calls = ActorCalls(actors, timeout_s, max_retries, "rollout actors")
        self.actors = actors
        self.timeout_s = timeout_s
        self.version = 0
        # The object-store copy of the weights the actors hold, kept so a restarted actor (which
        # comes back with the initial weights) can be given them again. None: initial weights.
        self._weights_ref: Any = None
        self.link = None
        if weight_transfer:
            from rl.transfer import TransferLink

            self.link = TransferLink(actors, weight_transfer, timeout_s)

    @property
    def restarts(self) -> int:
        return self.calls.restarts

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        parts = shard(requests, len(self.actors))
        # Each shard gets its own seed (seed + shard index): distinct streams per actor, and a retried
        # shard reproduces exactly what it would have made.
        def submit(i: int) -> Any:
            seeded = sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + i)
            return self.actors[i].call.remote("generate", parts[i], seeded)

        results = self.calls.run(submit, [i for i, part in enumerate(parts) if part], restore=self._restore)
        return [group for part in results for group in part]

    def load_weights(self, named_tensors: dict[str, Any], version: int) -> None:
        """Put the weights in the object store once; every actor reads the same shared copy.
        With a transfer link: broadcast them into every engine."""
        if self.link is not None:
            self._send(named_tensors, version)
            return
        import ray

        from policies.weights import pack_state

        ref = ray.put(pack_state(named_tensors))  # numpy buffers: read zero-copy by the actors
        self.calls.run(lambda i: self.actors[i].call.remote("load_weights", ref, version),
                       range(len(self.actors)))  # a restarted actor simply gets this load again
        self._weights_ref, self.version = ref, version

    def _send(self, named_tensors: dict[str, Any], version: int) -> None:
        """A broadcast round. Actors restarted since the group formed are waited for and the group
        re-formed first; an actor dying inside a round leaves the others' updates half done (vLLM
        has no abort), so that is an ActorFailureError: the run stops with a checkpoint to resume from."""
        from ray.exceptions import RayActorError

        self._reform_if_restarted()
        try:
            self.link.send(named_tensors, version)
        except (RayActorError, RuntimeError) as e:  # a dead peer: Ray's error, or the broadcast's
            raise ActorFailureError(f"rollout actors: weight transfer of version {version} failed mid-round: {e}") from e
        self.version = version

    def _reform_if_restarted(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        if self.link.engine is None:  # the first round forms the group
            return
        pids = []
        for i, ref in enumerate([actor.pid.remote() for actor in self.actors]):  # asked all at once
            try:
                pids.append(ray.get(ref, timeout=self.timeout_s))
            except RayActorError:  # dead or restarting: wait for Ray's restart (ActorFailureError if none)
                self.calls._await_restart(i)
                pids.append(ray.get(self.actors[i].pid.remote(), timeout=self.timeout_s))
        restarted = [i for i, (old, new) in enumerate(zip(self.link.pids, pids)) if old != new]
        if restarted:
            log.warning("rollout actors %s were restarted; re-forming the weight-transfer group", restarted)
            self.calls.restarts += len(restarted)
            self.link.reopen()

    def _restore(self, i: int) -> None:
        if self.link is not None:
            self._restore_by_transfer(i)
        elif self._weights_ref is not None:
            _gather([self.actors[i].call.remote("load_weights", self._weights_ref, self.version)], self.timeout_s,
                    f"rollout actor {i} (restoring weights version {self.version})")

    def _restore_by_transfer(self, i: int) -> None:
        """Re-form the group with restarted actor i and broadcast the last round's state dict again.

        The state dict holds the learner's tensors (no copy is kept), so this is only done from the
        learner's thread, while no optimizer step can change them underneath: a restart seen by
        generation running ahead (rollout.overlap) is an ActorFailureError, and the run resumes
        from its checkpoint."""
        import threading

        if self.link.engine is None:  # no group formed yet: the next sync forms one with everybody
            return
        if not self.link.source.state:  # nothing sent yet: the restarted actor holds the initial weights
            self.link.reopen()
            return
        if threading.current_thread() is not threading.main_thread():
            raise ActorFailureError(f"rollout actor {i} restarted while generating ahead (rollout.overlap); with "
                                    "rollout.weight_transfer its weights can only be restored between steps")
        log.info("rollout actor %d restarted: re-forming the weight-transfer group, re-sending version %d", i,
                 self.version)
        self.link.reopen()
        self.link.send(self.link.source.state, self.version)

    def close(self) -> None:
        """Leave the weight-transfer group, if any (the actors' engines go with the actors)."""
        if self.link is not None:
            self.link.close()

    def versions(self) -> list[int]:
        return _gather([a.get.remote("version") for a in self.actors], self.timeout_s,
                       "rollout actors (version)")


# Reward kwargs that only make sense in the driver process (TRL's callbacks and state objects).
DRIVER_ONLY = ("log_metric", "log_extra", "trainer_state", "environments")


class RemoteReward:
    """A reward hosted on actors, called like a local TRL reward function (blocking, with a timeout)."""

    def __init__(self, actors: list[Any], name: str, timeout_s: float = 300.0, max_retries: int = 2):
        self.calls = ActorCalls(actors, timeout_s, max_retries, f"reward actors ({name})")
        self.actors = actors
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        k = min(len(self.actors), max(1, n))
        index_parts = shard(list(range(n)), k)
        columns = {key: v for key, v in columns.items() if key not in DRIVER_ONLY}

        def submit(a: int) -> Any:
            idx = index_parts[a]
            return self.actors[a].call.remote("__call__", [prompts[i] for i in idx], [completions[i] for i in idx],
                                              **slice_columns(columns, idx, n))

        results = self.calls.run(submit, [a for a, idx in enumerate(index_parts) if idx])
        return [v for part in results for v in part]

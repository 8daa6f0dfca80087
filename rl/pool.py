"""Fan work out to groups of actors and gather it back in order, with timeouts.

`RolloutPool` drives the rollout actors (generation, weight sync, versions); `RemoteReward` makes a
reward hosted on actors look like a local TRL reward function. Sharding is contiguous, so order is
kept by concatenation; every wait has a timeout, so a dead or hung actor is an error, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from policies.engine import Rollout, RolloutRequest, SamplingParams
from reward.base import slice_columns

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


class RolloutPool:
    """N rollout actors, each hosting a RolloutEngine."""

    def __init__(self, actors: list[Any], timeout_s: float = 600.0):
        if not actors:
            raise ValueError("RolloutPool needs at least one actor")
        self.actors = actors
        self.timeout_s = timeout_s
        self.version = 0

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        parts = shard(requests, len(self.actors))
        refs = [a.call.remote("generate", part, sampling) for a, part in zip(self.actors, parts) if part]
        results = _gather(refs, self.timeout_s, "rollout actors (generate)")
        return [group for part in results for group in part]

    def load_weights(self, named_tensors: dict[str, Any], version: int) -> None:
        """Put the weights in the object store once; every actor reads the same shared copy."""
        import ray

        ref = ray.put(named_tensors)
        _gather([a.call.remote("load_weights", ref, version) for a in self.actors], self.timeout_s,
                "rollout actors (load_weights)")
        self.version = version

    def versions(self) -> list[int]:
        return _gather([a.get.remote("version") for a in self.actors], self.timeout_s,
                       "rollout actors (version)")


# Reward kwargs that only make sense in the driver process (TRL's callbacks and state objects).
DRIVER_ONLY = ("log_metric", "log_extra", "trainer_state", "environments")


class RemoteReward:
    """A reward hosted on actors, called like a local TRL reward function (blocking, with a timeout)."""

    def __init__(self, actors: list[Any], name: str, timeout_s: float = 300.0):
        self.actors = actors
        self.__name__ = name
        self.timeout_s = timeout_s

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        k = min(len(self.actors), max(1, n))
        index_parts = shard(list(range(n)), k)
        refs = []
        for actor, idx in zip(self.actors, index_parts):
            if not idx:
                continue
            cols = slice_columns({k: v for k, v in columns.items() if k not in DRIVER_ONLY}, idx, n)
            refs.append(actor.call.remote("__call__", [prompts[i] for i in idx], [completions[i] for i in idx],
                                          **cols))
        results = _gather(refs, self.timeout_s, f"reward actors ({self.__name__})")
        return [v for part in results for v in part]

"""Weight sync through Ray's object store: the CPU path, and any engine on any node.

The state dict is put into the object store once (packed as numpy, so actors read it zero-copy)
and every rollout actor loads that one shared copy with its engine's `load_weights`. The last
copy is kept, so an actor Ray restarts (it comes back with the initial weights) can be given it
again: one copy of the policy in shared memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.actor_calls import ActorCalls, gather
from pipeline.weight_sync.export import PackedState


class ObjectStoreSync:
    def __init__(self, calls: ActorCalls):
        self.calls = calls
        self._last: Any = None  # ObjectRef of the last state sent; None: the actors hold the initial weights

    def send(self, state: Mapping[str, Any], version: int) -> None:
        import ray

        ref = ray.put(PackedState.pack(state))
        actors = self.calls.actors
        # A restarted actor simply gets this load again (ActorCalls retries its share).
        self.calls.run(lambda i: actors[i].load_weights.remote(ref, version), range(len(actors)))
        self._last = ref

    def restore(self, actor: int, version: int) -> None:
        if self._last is not None:
            gather(
                [self.calls.actors[actor].load_weights.remote(self._last, version)],
                self.calls.timeout_s,
                f"rollout actor {actor} (restoring weights version {version})",
            )

    def close(self) -> None:
        self._last = None

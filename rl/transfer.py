"""The learner's side of vLLM's weight-transfer path (`rollout.weight_transfer: nccl | gloo`).

The learner is rank 0 of one process group with every inference worker of every rollout actor;
each sync broadcasts the policy's state dict straight into the engines (vLLM's
`TrainerWeightTransferEngine.send_weights`), instead of putting a copy in Ray's object store for
each actor to read. The control plane (init / start / update / finish) is vLLM's
`VLLMWeightSyncClient` protocol, implemented here over our rollout actors: `PoolSyncClient`.

vLLM's own `RayVLLMWeightSyncClient` sends every engine the same rank offset, which only suits one
engine (or one data-parallel engine); `PoolSyncClient` gives actor i's workers the ranks after
actor i-1's. A dead actor breaks the group: `TransferLink.reopen` forms a new one (on a new port)
with the actor Ray restarted.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def rank_offsets(world_sizes: list[int]) -> list[int]:
    """Rank of each actor's first worker in the transfer group; the learner is rank 0."""
    offsets, next_rank = [], 1
    for size in world_sizes:
        if size < 1:
            raise ValueError(f"an engine has no workers (world sizes {world_sizes})")
        offsets.append(next_rank)
        next_rank += size
    return offsets


class PoolSyncClient:
    """vLLM's `VLLMWeightSyncClient` over rollout actors hosting `VLLMEngine`s: every call fans out
    to all actors and waits for all of them, within `timeout_s`.

    `version` is the policy version the round in flight carries: vLLM's trainer engine calls
    `finish_weight_update()` without one, so the client supplies it to the engines.
    """

    def __init__(self, actors: list[Any], world_sizes: list[int], timeout_s: float):
        if len(actors) != len(world_sizes):
            raise ValueError("one world size per actor")
        self.actors = actors
        self.offsets = rank_offsets(world_sizes)
        self.timeout_s = timeout_s
        self.version = 0

    def _all(self, method: str, what: str, *args_per_actor: list[Any]) -> None:
        from rl.pool import _gather

        refs = [actor.call.remote(method, *(args[i] for args in args_per_actor))
                for i, actor in enumerate(self.actors)]
        _gather(refs, self.timeout_s, f"rollout actors ({what})")

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = [{**init_info, "rank_offset": offset} for offset in self.offsets]
        self._all("init_weight_transfer", "joining the weight-transfer group", infos)

    def shutdown_weight_transfer_engine(self) -> None:
        self._all("shutdown_weight_transfer", "leaving the weight-transfer group")

    def start_weight_update(self) -> None:
        self._all("start_weight_update", f"starting weight update {self.version}")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all("update_weights", f"receiving weights version {self.version}", [update_info] * len(self.actors))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.version
        self._all("finish_weight_update", f"finishing weight update {version}", [version] * len(self.actors))


class TransferLink:
    """One weight-transfer group between this process (the learner) and a fixed list of rollout actors."""

    def __init__(self, actors: list[Any], backend: str, timeout_s: float):
        # Imports vLLM: only runs with rollout.weight_transfer set.
        from policies import vllm_transfer

        self._transfer = vllm_transfer
        if backend not in vllm_transfer.BACKENDS:
            raise ValueError(f"rollout.weight_transfer must be one of {vllm_transfer.BACKENDS}, got {backend!r}")
        self.actors = actors
        self.backend = backend
        self.timeout_s = timeout_s
        self.source = vllm_transfer.StateDictSource()  # the state dict of the round in flight (or the last one)
        self.client: PoolSyncClient | None = None
        self.engine: Any = None  # vLLM's trainer engine, once the group is formed
        self.pids: list[int] = []  # the actor processes in the group (a restart changes one)

    def open(self) -> None:
        import ray

        from rl.pool import _gather

        sizes = _gather([a.call.remote("transfer_world_size") for a in self.actors], self.timeout_s,
                        "rollout actors (weight-transfer world size)")
        self.pids = _gather([a.pid.remote() for a in self.actors], self.timeout_s, "rollout actors (pid)")
        self.client = PoolSyncClient(self.actors, sizes, self.timeout_s)
        address = ray.util.get_node_ip_address()  # the workers connect to the learner's node
        self.engine = self._transfer.open_trainer(self.backend, self.client, self.source, 1 + sum(sizes), address)
        log.info("weight-transfer group (%s) formed: learner + %d workers on %d actors", self.backend,
                 sum(sizes), len(self.actors))

    def send(self, state: dict[str, Any], version: int) -> None:
        """Broadcast `state` (name -> tensor, as `policy_state_dict` makes it) to every engine as `version`."""
        if self.engine is None:
            self.open()
        self.source.update(state)
        self.client.version = version
        self.engine.send_weights()

    def reopen(self) -> None:
        """Form a new group (a restarted actor lost its place in the old one); live actors leave the old."""
        import ray
        from ray.exceptions import RayError

        if self.client is not None:
            for actor in self.actors:
                try:  # a restarted actor was never in the old group: leaving is a no-op there
                    ray.get(actor.call.remote("shutdown_weight_transfer"), timeout=self.timeout_s)
                except RayError as e:
                    log.warning("an actor could not leave the old weight-transfer group: %s", e)
        self.close()
        self.open()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None

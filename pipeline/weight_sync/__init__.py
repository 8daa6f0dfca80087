"""How the learner's weights reach the rollout engines: one protocol, one module per transport.

- `shared_memory.py`: actors on the learner's node copy straight from the learner's memory: POSIX
  shared memory on the CPU, CUDA IPC for actors on the learner's GPU. The fast path on one node.
- `broadcast.py`: a bucketed broadcast from the learner's device to every actor: NCCL for actors
  on other GPUs (and nodes), gloo between CPUs.
- `object_store.py`: the state dict goes into Ray's object store once and every actor loads that
  copy: any engine, any node, no process group. The fallback.
- `vllm_transfer.py`: vLLM's own weight-transfer engine (`rollout.weight_sync: vllm_nccl`; `vllm_gloo` is
  its CPU twin, what CI runs): the learner broadcasts straight into vLLM's workers.
- `export.py`: what is sent: the policy's weights as engines load them (tied head included, LoRA
  merged, shards gathered), one tensor at a time, and the staging buffers of the bucketed paths.
- `collective.py`: the process group the broadcasting transports form with the actors.

`rollout.weight_sync: auto` picks the first of shared_memory, broadcast, object_store that can reach
every actor from where they are (`choose_weight_sync`). The rollout pool calls `send` after
optimizer steps and `restore` for an actor Ray restarted (it comes back with the initial weights);
it never looks at which transport it holds. The actors' receiving side is `receiver.WeightReceiver`,
a mixin every rollout actor declares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rl.config import VLLM_WEIGHT_SYNCS

log = logging.getLogger(__name__)


class WeightSync(Protocol):
    def send(self, state: Mapping[str, Any], version: int) -> None:
        """Every actor holds `state` as policy `version` when this returns. `state` is read once, in
        order, one tensor at a time (a PolicyWeights, or any state dict)."""
        ...

    def restore(self, actor: int, version: int) -> None:
        """Actor `actor` was restarted by Ray (it holds the initial weights): give it `version` again."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Location:
    """Where a process's weights live: its Ray node, and the UUID of its GPU (None: the CPU)."""

    node: str
    gpu: str | None = None


def choose_weight_sync(learner: Location, actors: list[Location]) -> str:
    """The fastest transport that reaches every actor: shared memory when all share the learner's node
    and device (the CPU, or the learner's own GPU through CUDA IPC), a broadcast when the learner and
    every actor are each on a GPU of their own (NCCL refuses two ranks on one device, which GPU fractions
    would give it), else the object store."""
    if all(a.node == learner.node and a.gpu == learner.gpu for a in actors):
        return "shared_memory"
    ranks = [learner, *actors]
    if all(r.gpu is not None for r in ranks) and len(set(ranks)) == len(ranks):
        return "broadcast"
    return "object_store"


def engine_options(weight_sync: str) -> dict[str, Any]:
    """What a rollout engine must be started with for `weight_sync` (VLLMEngine keyword arguments)."""
    if weight_sync not in VLLM_WEIGHT_SYNCS:
        return {}
    # Named, not imported: vLLM imports the extension in each worker, which registers the gloo twin there.
    return {
        "weight_transfer": VLLM_WEIGHT_SYNCS[weight_sync],
        "worker_extension": "pipeline.weight_sync.vllm_transfer.TransferWorkerExtension",
    }


def learner_location(gpu_ids: list[str]) -> Location:
    """The learner's Location: this Ray node, and (when its weights are on a GPU) the first of the GPU ids
    placement gave it (Ray's ids, as the actors' `weights_location` reports theirs)."""
    import ray
    import torch

    on_gpu = bool(gpu_ids) and torch.cuda.is_available()
    return Location(ray.get_runtime_context().get_node_id(), str(gpu_ids[0]) if on_gpu else None)


def make_weight_sync(weight_sync: str, calls: Any, learner: Location, bucket_bytes: int = 512 << 20) -> WeightSync:
    """The transport `weight_sync` (a checked `rollout.weight_sync`) names over the rollout actors behind
    `calls` (ActorCalls) from a learner at `learner`: vLLM's weight-transfer engine for vllm_nccl /
    vllm_gloo; `auto`: each actor says where its engine's weights live (`WeightReceiver.weights_location`),
    and choose_weight_sync takes the fastest path that reaches them all."""
    if weight_sync in VLLM_WEIGHT_SYNCS:
        from pipeline.weight_sync.vllm_transfer import VLLMTransferSync  # imports vLLM

        return VLLMTransferSync(calls, VLLM_WEIGHT_SYNCS[weight_sync])
    if weight_sync == "auto":
        actors = calls.all(lambda i: calls.actors[i].weights_location.remote(), "location")
        weight_sync = choose_weight_sync(learner, actors)
        log.info("weight sync: %s (learner on %s; actors on %s)", weight_sync, learner, set(actors))
    if weight_sync == "shared_memory":
        from pipeline.weight_sync.shared_memory import SharedMemorySync

        return SharedMemorySync(calls, bucket_bytes)
    if weight_sync == "broadcast":
        import torch

        from pipeline.weight_sync.broadcast import BroadcastSync

        return BroadcastSync(
            calls, "nccl" if learner.gpu is not None and torch.cuda.is_available() else "gloo", bucket_bytes
        )
    from pipeline.weight_sync.object_store import ObjectStoreSync

    return ObjectStoreSync(calls)

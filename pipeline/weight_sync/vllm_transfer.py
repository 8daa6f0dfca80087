"""Weight sync through vLLM's weight-transfer engine: NCCL on GPUs, and its CPU twin over gloo.

vLLM (>= 0.32) moves a trainer's weights into running engines through a *weight-transfer engine*:
each LLM is started with `weight_transfer_config={"backend": ...}` (see `engine_options` in this
package), the trainer opens a process group with every inference worker (trainer = rank 0) and,
each round, drives `start_weight_update -> update_weights (workers receive) + broadcast (trainer
sends) -> finish_weight_update` through a control-plane client; workers load what they receive with
vLLM's layerwise reload. This module is the learner's side (`VLLMTransferSync`: the rounds, the
group, restarts), the control-plane client over our rollout actors (`PoolSyncClient`), and the gloo
twin; the engine's side is `VLLMEngine`'s transfer methods (policies/vllm_engine.py).

`backend="nccl"` is vLLM's own engine (GPUs). `backend="gloo"` is registered here: the same engine
classes and the same round trip, with the NCCL communicator swapped for a torch.distributed gloo
group (one tensor at a time; NCCL's packed mode needs CUDA streams). It exists so that everything
but the NCCL wire itself (the engine config, the worker RPCs, the rank layout over several rollout
actors, versioning, restarts) runs on a CPU machine and is tested there; it is also a working,
if slow, transport for CPU clusters. Worker processes import this module through
`TransferWorkerExtension` (vLLM imports the worker extension before it loads the model), which is
what registers the gloo engine where vLLM creates it.

vLLM's own `RayVLLMWeightSyncClient` sends every engine the same rank offset, which only suits one
engine; `PoolSyncClient` gives actor i's workers the ranks after actor i-1's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import torch
from torch.distributed import BroadcastOptions
from vllm.distributed.utils import (
    stateless_destroy_torch_distributed_process_group,
    stateless_init_torch_distributed_process_group,
)
from vllm.distributed.weight_transfer import ParamMeta, WeightSource, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferInitInfo,
    NCCLWeightTransferUpdateInfo,
)
from vllm.utils.network_utils import get_open_port

from adapters.vllm import register_weight_transfer
from pipeline.actor_calls import ActorCalls, gather
from pipeline.weight_sync.collective import failed_ref, kill_stuck, unfinished, watched
from pipeline.weight_sync.export import as_weights, check_rereadable
from policies.vllm_engine import WeightReloadExtension
from rl.errors import ActorFailureError

log = logging.getLogger(__name__)
GLOO_TIMEOUT = timedelta(minutes=10)  # a peer that never arrives is an error, not a hang


class StateDictSource(WeightSource):
    """A `WeightSource` over the weights the learner handed over (`update` before each round).

    vLLM's `ModuleSource` sends `named_parameters()`; a rollout engine needs the weights as
    `PolicyWeights` gives them instead (tied output head included, LoRA merged, PEFT prefixes off,
    cast to the engines' dtype one tensor at a time).
    """

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None):
        self.state = as_weights(state or {})

    def update(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = as_weights(state)

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, dtype, shape) for name, dtype, shape in self.state.meta()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.state:
            yield name, self.state[name]


class GlooGroup:
    """What the NCCL engines need of their communicator (broadcast from a rank, destroy), over gloo."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, timeout: timedelta = GLOO_TIMEOUT):
        self.pg = stateless_init_torch_distributed_process_group(
            address, port, rank, world_size, backend="gloo", timeout=timeout
        )

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        # ProcessGroup.broadcast takes the root as a group rank (the module-level dist.broadcast
        # would want a global rank, which a stateless group does not have).
        options = BroadcastOptions()
        options.rootRank = src
        self.pg.broadcast([tensor], options).wait()

    def destroy(self) -> None:
        stateless_destroy_torch_distributed_process_group(self.pg)


def worker_rank(parallel_config: Any, rank_offset: int) -> int:
    """This inference worker's rank in the trainer group (as vLLM's NCCL engine computes it)."""
    dp_rank = parallel_config.data_parallel_index
    return dp_rank * parallel_config.world_size + parallel_config.rank + rank_offset


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """Worker side: NCCL's engine (layerwise reload around the receive) with a gloo group."""

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        if init_info.packed:
            raise ValueError("the gloo weight-transfer backend sends tensors one by one: packed must be False")
        self.packed = False
        self.model_update_group = GlooGroup(
            init_info.master_address,
            init_info.master_port,
            worker_rank(self.parallel_config, init_info.rank_offset),
            init_info.world_size,
        )

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.model_update_group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_transfer_engine() first")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
            self.model_update_group.broadcast(weight, src=0)
            self.model.load_weights([(name, weight)])


@dataclass
class GlooTrainerInitInfo(NCCLTrainerInitInfo):
    backend: ClassVar[str] = "gloo"
    packed: bool = False


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """Trainer side: NCCL's `send_weights` round trip, with the endpoint and the broadcast over gloo."""

    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: Any, source: WeightSource | None = None
    ) -> GlooTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("gloo trainer weight transfer requires a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=False)
        if not engine.is_sender:
            return engine
        worker_info = NCCLWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            packed=False,
        )
        # The workers block in the rendezvous until rank 0 joins: start them first, join, then wait.
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, worker_init_payload(worker_info))
            engine.model_update_group = GlooGroup(
                init_info.master_address, init_info.master_port, 0, init_info.world_size
            )
            joined.result()
        return engine

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        for _name, tensor in self._checked_iter(source, meta):
            self.model_update_group.broadcast(tensor.contiguous(), src=0)


register_weight_transfer("gloo", GlooWeightTransferEngine, GlooTrainerWeightTransferEngine)  # in every process
TRAINER_INIT_INFO = {"nccl": NCCLTrainerInitInfo, "gloo": GlooTrainerInitInfo}  # the learner's side, per backend
TRANSFER_BACKENDS = tuple(TRAINER_INIT_INFO)


class TransferWorkerExtension(WeightReloadExtension):
    """The worker extension of an engine with a transfer backend: importing it (vLLM does, in every
    worker before the model loads) registers the gloo engine there."""


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
    to all actors and waits for all of them, within the group's timeout.

    `version` is the policy version the round in flight carries: vLLM's trainer engine calls
    `finish_weight_update()` without one, so the client supplies it to the engines.
    """

    def __init__(self, calls: ActorCalls, world_sizes: list[int]):
        if len(calls.actors) != len(world_sizes):
            raise ValueError("one world size per actor")
        self.calls = calls
        self.offsets = rank_offsets(world_sizes)
        self.version = 0
        self.receiving: list[Any] = []  # the actors' update_weights calls of the round in flight

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        actors = self.calls.actors
        self.calls.all(
            lambda i: actors[i].init_weight_transfer.remote({**init_info, "rank_offset": self.offsets[i]}),
            "joining the weight-transfer group",
        )

    def shutdown_weight_transfer_engine(self) -> None:
        actors = self.calls.actors
        self.calls.all(lambda i: actors[i].shutdown_weight_transfer.remote(), "leaving the weight-transfer group")

    def start_weight_update(self) -> None:
        actors = self.calls.actors
        self.receiving = []
        self.calls.all(lambda i: actors[i].start_weight_update.remote(), f"starting weight update {self.version}")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """Every actor receives (blocking in the broadcast the learner runs at the same time)."""
        self.receiving = [actor.update_weights.remote(update_info) for actor in self.calls.actors]
        gather(self.receiving, self.calls.timeout_s, f"rollout actors (receiving weights version {self.version})")

    def failed_receiver(self) -> int | None:
        """The actor whose receive of the round in flight ended in an error (its process died), if any."""
        return failed_ref(self.receiving)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.version
        actors = self.calls.actors
        self.calls.all(lambda i: actors[i].finish_weight_update.remote(version), f"finishing weight update {version}")


class VLLMTransferSync:
    """The learner's side: one weight-transfer group with every worker of the rollout actors, formed
    at the first round and re-formed (on a new port) when Ray restarts an actor.

    Before each round the actors' pids are compared with those recorded when the group formed: a
    restarted actor is waited for and the group re-formed first. An actor that dies *inside* a round
    leaves the other engines' updates half done (vLLM has no abort), so that is an
    ActorFailureError: the run stops with a checkpoint to resume from.
    """

    def __init__(self, calls: ActorCalls, backend: str):
        if backend not in TRAINER_INIT_INFO:
            raise ValueError(f"vLLM weight-transfer backend must be one of {TRANSFER_BACKENDS}, got {backend!r}")
        self.calls = calls
        self.backend = backend
        self.source = StateDictSource()  # the state dict of the round in flight (or the last one)
        self.client: PoolSyncClient | None = None
        self.engine: Any = None  # vLLM's trainer engine, once the group is formed
        self.pids: list[int] = []  # the actor processes in the group (a restart changes one)
        self._learner_thread: threading.Thread | None = None  # the thread that sends (restores must too)
        self.stuck: list[int] = []  # actors left blocked in a broken round (killed at close)

    def send(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        from ray.exceptions import RayActorError

        self._learner_thread = threading.current_thread()
        self._reform_if_restarted()
        try:
            self._round(state, version)
        except (RayActorError, RuntimeError, TimeoutError) as e:  # a dead peer: Ray's error, or the broadcast's
            self.engine = None  # the group is broken; its communicator may still be blocked, so it is not touched
            self.stuck = unfinished(self.client.receiving) if self.client is not None else []
            raise ActorFailureError(
                f"rollout actors: weight transfer of version {version} failed mid-round: {e}"
            ) from e

    def restore(self, actor: int, version: int) -> None:
        """Re-form the group with the restarted actor and broadcast the last round's state dict again.

        The state dict holds the learner's tensors (no copy is kept), so this is only done from the
        learner's thread, while no optimizer step can change them underneath: a restart seen by
        generation running ahead (rollout.overlap) is an ActorFailureError, and the run resumes
        from its checkpoint."""
        if self.engine is None:  # no group formed yet: the next round forms one with everybody
            return
        if not self.source.state:  # nothing sent yet: the restarted actor holds the initial weights
            self._reopen()
            return
        check_rereadable(self.source.state, self._learner_thread, actor, f"rollout.weight_sync=vllm_{self.backend}")
        log.info(
            "rollout actor %d restarted: re-forming the weight-transfer group, re-sending version %d", actor, version
        )
        self._reopen()
        self._round(self.source.state, version)

    def close(self) -> None:
        kill_stuck(self.calls.actors, self.stuck, "weight transfer")
        self.stuck = []
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None

    def _round(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """One round, watched (an NCCL broadcast waits forever for a peer that died)."""
        if self.engine is None:
            self._open()
        self.source.update(state)
        self.client.version = version
        if self.backend == "nccl" and torch.cuda.is_available():
            # vLLM's packed sender reads the weights on streams of its own, which do not wait for the learner's:
            # the optimizer step queued on this device must be done before they read.
            torch.cuda.current_stream().synchronize()

        def dead() -> str | None:
            i = self.client.failed_receiver()
            return None if i is None else f"rollout actor {i}"

        watched(self.engine.send_weights, dead, self.calls.timeout_s, f"weight transfer of version {version}")

    def _open(self) -> None:
        import ray

        actors = self.calls.actors
        sizes = self.calls.all(lambda i: actors[i].transfer_world_size.remote(), "weight-transfer world size")
        self.pids = gather([a.pid.remote() for a in actors], self.calls.timeout_s, "rollout actors (pid)")
        self.client = PoolSyncClient(self.calls, sizes)
        address = ray.util.get_node_ip_address()  # the workers connect to the learner's node
        info = TRAINER_INIT_INFO[self.backend](
            master_address=address, master_port=get_open_port(), world_size=1 + sum(sizes), rank=0
        )
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)
        log.info(
            "weight-transfer group (%s) formed: learner + %d workers on %d actors",
            self.backend,
            sum(sizes),
            len(actors),
        )

    def _reopen(self) -> None:
        """Form a new group (a restarted actor lost its place in the old one); live actors leave the old."""
        import ray
        from ray.exceptions import RayError

        if self.client is not None:
            for actor in self.calls.actors:
                try:  # a restarted actor was never in the old group: leaving is a no-op there
                    ray.get(actor.shutdown_weight_transfer.remote(), timeout=self.calls.timeout_s)
                except RayError as e:
                    log.warning("an actor could not leave the old weight-transfer group: %s", e)
        self.close()
        self._open()

    def _reform_if_restarted(self) -> None:
        if self.engine is None:  # the first round forms the group
            return
        restarted = self.calls.restarted_since(self.pids)
        if restarted:
            log.warning("rollout actors %s were restarted; re-forming the weight-transfer group", restarted)
            self._reopen()

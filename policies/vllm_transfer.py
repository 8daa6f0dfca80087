"""vLLM's weight-transfer API: the NCCL path on GPUs, and its CPU twin over gloo.

vLLM (>= 0.32) moves a trainer's weights into running engines through a *weight-transfer engine*:
the LLM is started with `weight_transfer_config={"backend": ...}`, the trainer opens a process
group with every inference worker (trainer = rank 0) and, each round, drives
`start_weight_update -> update_weights (workers receive) + broadcast (trainer sends) ->
finish_weight_update` through a control-plane client. The trainer side is
`WeightTransferTrainerFactory.trainer_init(init_info, client=..., source=...)` then
`engine.send_weights()`; workers load what they receive with vLLM's layerwise reload.

`backend="nccl"` is vLLM's own engine (GPUs). `backend="gloo"` is registered here: the same engine
classes and the same round trip, with the NCCL communicator swapped for a torch.distributed gloo
group (one tensor at a time; NCCL's packed mode needs CUDA streams). It exists so that everything
but the NCCL wire itself (the engine config, the worker RPCs, the rank layout over several rollout
actors, versioning, restarts) runs on a CPU machine and is tested there; it is also a working,
if slow, transport for CPU clusters.

Importing this module imports vLLM; `policies.vllm_engine` imports it only when a transfer backend
is configured. Worker processes import it through `TransferWorkerExtension`, which is what
registers the gloo engine where vLLM creates it (in `Worker.load_model`).
"""

from __future__ import annotations

from collections.abc import Iterator
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
from vllm.distributed.weight_transfer import (
    ParamMeta,
    WeightSource,
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferInitInfo,
    NCCLWeightTransferUpdateInfo,
)
from vllm.utils.network_utils import get_open_port

from policies.vllm_engine import WeightReloadExtension

GLOO_TIMEOUT = timedelta(minutes=10)  # a peer that never arrives is an error, not a hang


class StateDictSource(WeightSource):
    """A `WeightSource` over the latest state dict the learner handed over (`update` before each round).

    vLLM's `ModuleSource` sends `named_parameters()`; a rollout engine needs the state dict as
    `policy_state_dict` builds it instead (tied output head included, LoRA merged, PEFT prefixes off).
    """

    def __init__(self, state: dict[str, torch.Tensor] | None = None):
        self.state = state or {}

    def update(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.state.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.state.items()


class GlooGroup:
    """What the NCCL engines need of their communicator (broadcast from a rank, destroy), over gloo."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, timeout: timedelta = GLOO_TIMEOUT):
        self.pg = stateless_init_torch_distributed_process_group(address, port, rank, world_size, backend="gloo",
                                                                  timeout=timeout)

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
        self.model_update_group = GlooGroup(init_info.master_address, init_info.master_port,
                                            worker_rank(self.parallel_config, init_info.rank_offset),
                                            init_info.world_size)

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
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: Any,
                     source: WeightSource | None = None) -> GlooTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("gloo trainer weight transfer requires a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=False)
        if not engine.is_sender:
            return engine
        worker_info = NCCLWeightTransferInitInfo(master_address=init_info.master_address,
                                                 master_port=init_info.master_port, rank_offset=1,
                                                 world_size=init_info.world_size, packed=False)
        # The workers block in the rendezvous until rank 0 joins: start them first, join, then wait.
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, worker_init_payload(worker_info))
            engine.model_update_group = GlooGroup(init_info.master_address, init_info.master_port, 0,
                                                  init_info.world_size)
            joined.result()
        return engine

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        for _name, tensor in self._checked_iter(source, meta):
            self.model_update_group.broadcast(tensor.contiguous(), src=0)


def register() -> None:
    """Make `backend="gloo"` known to vLLM's factories in this process (idempotent)."""
    if "gloo" not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine("gloo", GlooWeightTransferEngine)
    if "gloo" not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine("gloo", GlooTrainerWeightTransferEngine)


register()
TRAINER_INIT_INFO = {"nccl": NCCLTrainerInitInfo, "gloo": GlooTrainerInitInfo}  # the learner's side, per backend
BACKENDS = tuple(TRAINER_INIT_INFO)


class TransferWorkerExtension(WeightReloadExtension):
    """The worker extension of an engine with a transfer backend: importing it (vLLM does, in every
    worker before the model loads) registers the gloo engine there."""


def open_trainer(backend: str, client: Any, source: WeightSource, world_size: int,
                 address: str = "127.0.0.1") -> NCCLTrainerWeightTransferEngine:
    """Rendezvous the learner (rank 0) with `world_size - 1` inference workers behind `client`
    (`backend` is one of BACKENDS: TransferLink checks it)."""
    info = TRAINER_INIT_INFO[backend](master_address=address, master_port=get_open_port(), world_size=world_size,
                                      rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

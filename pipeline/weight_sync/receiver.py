"""The rollout actors' side of the weight transports: a mixin every rollout actor declares at spawn time.

An engine only has to load a state dict (`RolloutEngine.load_weights`) and say where its weights live
(`weights_device`); what a transport needs inside the actor process (shared-memory files mapped once
per session, membership of the broadcast group and its receive buffer) is here, as methods of the
actor with their state on it. vLLM's own weight transfer is driven through the engine's methods
(`VLLMEngine.init_weight_transfer` ..), since vLLM's workers, not the actor, receive.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import torch

from pipeline.weight_sync import Location
from pipeline.weight_sync.collective import broadcast, close_group, join_store, open_group
from pipeline.weight_sync.shared_memory import SharedTensors
from policies.rollout_engine import indexed_device


def receive_device(engine_device: str, backend: str) -> torch.device:
    """Where a broadcast bucket lands: NCCL on the engine's GPU, with its index (NCCL and
    `torch.cuda.set_device` need one: an engine may say just "cuda"); gloo on the CPU (the engine copies
    on load)."""
    return indexed_device(engine_device) if backend == "nccl" else torch.device("cpu")


class WeightReceiver:
    """Mixed into rollout actors (`pipeline.actors.start_group(..., mixins=(WeightReceiver,))`) in front of
    a `RolloutEngine`; the engine's `load_weights` and `weights_device` are what it calls."""

    # Per-actor state, created on first use (the mixin has no constructor of its own).
    _mapped: dict[int, torch.UntypedStorage]  # the sender's storages opened in this session, by key
    _mapped_session: str
    _weight_group: tuple[str, str, Any, Any] | None  # (name, backend, the group, its store: kept alive with it)
    _receive_buffer: torch.Tensor | None

    def weights_location(self) -> Location:
        """Where this engine's weights live: its Ray node, and its GPU (Ray's id for the GPU this actor was
        given) when the engine runs on one. `auto` weight sync compares it with the learner's."""
        import ray

        on_gpu = str(self.weights_device()).startswith("cuda")
        gpus = ray.get_gpu_ids() if on_gpu else []
        return Location(ray.get_runtime_context().get_node_id(), str(gpus[0]) if gpus else None)

    # -- shared memory (pipeline/weight_sync/shared_memory.py) ------------------------------------

    def load_shared(self, bucket: SharedTensors, version: int) -> None:
        """Load one bucket of the learner's weights straight from its memory."""
        if getattr(self, "_mapped_session", None) != bucket.session:  # a new sender: a new run or transport
            self._mapped, self._mapped_session = {}, bucket.session
        tensors = bucket.attach(self._mapped)
        self.load_weights(tensors, version)
        for device in {t.device for t in tensors.values() if t.is_cuda}:
            torch.cuda.synchronize(device)  # copied before the sender reuses its staging or steps its optimizer

    def release_shared(self) -> None:
        """Unmap every file of the sender's (its `close`): torch unlinks a shared file once every process
        that mapped it lets go, and an actor killed holding one would keep it in /dev/shm for good."""
        self._mapped, self._mapped_session = {}, ""

    # -- broadcast (pipeline/weight_sync/broadcast.py) ----------------------------------------------

    def join_broadcast(
        self, name: str, backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float
    ) -> None:
        """Leave any old group, join group `name` as `rank` (the learner is rank 0)."""
        self.leave_broadcast()
        if backend == "nccl":
            torch.cuda.set_device(receive_device(self.weights_device(), backend))
        timeout = timedelta(seconds=timeout_s)
        store = join_store(host, port, world_size, timeout)
        self._weight_group = (name, backend, open_group(backend, store, name, rank, world_size, timeout), store)

    def leave_broadcast(self) -> None:
        group = getattr(self, "_weight_group", None)
        if group is not None:
            close_group(group[2])
        self._weight_group, self._receive_buffer = None, None

    def receive_broadcast(
        self, name: str, manifest: list[tuple[str, torch.dtype, tuple[int, ...], int]], nbytes: int, version: int
    ) -> None:
        """Receive one bucket of `nbytes` and load the tensors `manifest` lays out in it ((name, dtype, shape,
        byte offset)). NCCL receives on the engine's GPU; gloo on the CPU (the engine copies on load)."""
        group_name, backend, group, _ = self._weight_group
        if group_name != name:
            raise RuntimeError(f"weight broadcast for group {name}, but this actor is in {group_name}")
        device = receive_device(self.weights_device(), backend)
        buffer = getattr(self, "_receive_buffer", None)
        if buffer is None or buffer.device != device or buffer.numel() < nbytes:
            buffer = self._receive_buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        bucket = buffer[:nbytes]  # [nbytes]
        broadcast(group, bucket, src=0)
        views = {
            key: bucket[offset : offset + dtype.itemsize * math.prod(shape)].view(dtype).view(shape)
            for key, dtype, shape, offset in manifest
        }
        self.load_weights(views, version)

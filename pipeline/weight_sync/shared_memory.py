"""Weight sync through shared memory on one node: each actor copies straight from the learner's memory.

- CPU: the learner's weights are moved into POSIX shared memory once, in place (torch's file-system
  sharing: the learner keeps training on the same tensors). One memcpy, no serialisation, no object
  store (benchmarks/weight_sync.py: within 1.5x of an in-process copy).
- GPU: CUDA IPC handles of the learner's storages, so an actor on the learner's GPU copies device to
  device (the colocated layout; verl does the same for its hybrid engine).

Either way each storage (a parameter's, the staging buffer's) is shared once per session and each actor
opens it once: a sync sends views into storages the actors already hold (key, offset, shape, stride),
and the same lines rebuild them on CPU and GPU; only opening a storage differs.

Tensors that must be cast (float32 master weights, bfloat16 engines) or that are not the learner's
own (LoRA-merged, gathered from shards) are copied into a staging buffer of `bucket_bytes`, reused
bucket after bucket: the extra memory is one bucket (or the policy as sent, if smaller), never a
copy of the policy. Each bucket is one `load_weights(SharedTensors, version)` call on every actor:
the engines need nothing special: the actor's receiving side (`WeightReceiver.load_shared`) rebuilds
the tensors over the shared memory and hands them to the engine's `load_weights`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from adapters.torch import attach_cpu_storage, cuda_ipc_handle, open_cuda_ipc, share_cpu_storage
from pipeline.actor_calls import ActorCalls
from pipeline.actors import call_each
from pipeline.weight_sync.export import Staging, aligned, as_weights, bucket_bytes_for, check_rereadable, fused_runs

log = logging.getLogger(__name__)


@dataclass
class SharedTensors:
    """One bucket, picklable, a few bytes per tensor: each tensor as a view into a storage the sender
    shared once per session (`views`: name -> (storage key, offset, shape, stride, dtype); key None for an
    empty tensor), and what opens each of those storages in another process (`storages`: key -> a
    shared-memory file, or a CUDA IPC handle of the whole storage). The receiving actor
    (`WeightReceiver.load_shared`) rebuilds the tensors over the sender's memory with `attach`; they are
    valid until the call that received them returns (the sender then reuses its staging buffer)."""

    session: str
    storages: dict[int, tuple]
    views: dict[str, tuple]

    def attach(self, mapped: dict[int, torch.UntypedStorage]) -> dict[str, torch.Tensor]:
        """The tensors, in the receiving process. `mapped`: that process's storages of this session by
        key: a sync names the same storages every time (the learner's tensors, the staging buffer), so
        each is opened once per session, not once per sync (opening a CUDA IPC handle maps device memory:
        milliseconds, and every open is one more mapping to release)."""
        return {name: _view(view, self.storages, mapped) for name, view in self.views.items()}


def _view(view: tuple, storages: dict[int, tuple], mapped: dict[int, torch.UntypedStorage]) -> torch.Tensor:
    key, offset, shape, stride, dtype = view
    if key is None:  # an empty tensor: no storage to share
        return torch.empty(shape, dtype=dtype)
    storage = mapped.get(key)
    if storage is None:
        storage = mapped[key] = _open(storages[key])
    return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, shape, stride)


def _open(opener: tuple) -> torch.UntypedStorage:
    if opener[0] == "cpu":
        _, manager, filename, nbytes = opener
        return attach_cpu_storage(manager, filename, nbytes)
    _, gpu_uuid, handle = opener
    return open_cuda_ipc(handle, _local_device_index(gpu_uuid))


def _local_device_index(gpu_uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == gpu_uuid:
            return i
    raise RuntimeError(
        f"rollout.weight_sync=shared_memory: this actor does not see the learner's GPU {gpu_uuid}: "
        "CUDA IPC only reaches actors on the learner's GPU (use weight_sync: broadcast)"
    )


def _opener(tensor: torch.Tensor) -> tuple:
    """What opens `tensor`'s whole storage in another process. A CPU storage is moved into shared memory
    in place (the learner keeps training on it); a CUDA storage gets an IPC handle."""
    if tensor.is_cuda:
        return ("cuda", str(torch.cuda.get_device_properties(tensor.device).uuid), cuda_ipc_handle(tensor))
    return ("cpu", *share_cpu_storage(tensor))


class SharedMemorySync:
    """The learner's side; see the module docstring."""

    def __init__(self, calls: ActorCalls, bucket_bytes: int = 512 << 20):
        self.calls = calls
        self.bucket_bytes = bucket_bytes
        self.session = uuid.uuid4().hex
        self._staging: dict[torch.device, Staging] = {}
        # Each storage is shared once per session, keyed by its address (finding 9 of the GPU reading: an IPC
        # handle made per tensor per sync re-registers the memory and re-maps it in every actor). address ->
        # (what opens it elsewhere, the storage: held, so the address is not reused while the key is known).
        self._shared: dict[int, tuple[tuple, torch.UntypedStorage]] = {}
        self._last: Any = None  # the weights last sent (their live tensors): what a restarted actor is given
        self._learner_thread: threading.Thread | None = None

    def send(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._learner_thread = threading.current_thread()
        self._last = as_weights(state)
        restarted = self._stream(self._last, version, range(len(self.calls.actors)))
        for i in sorted(restarted):  # came back with the initial weights mid-sync: it gets every bucket again
            check_rereadable(self._last, self._learner_thread, i, "rollout.weight_sync=shared_memory")
            self._stream(self._last, version, [i])

    def restore(self, actor: int, version: int) -> None:
        if self._last is None:  # nothing sent yet: the restarted actor holds the initial weights already
            return
        check_rereadable(self._last, self._learner_thread, actor, "rollout.weight_sync=shared_memory")
        self._stream(self._last, version, [actor])

    def close(self) -> None:
        """The actors unmap the learner's files, then the staging buffers go. torch unlinks a shared
        file once every process that mapped it has let go: an actor killed still holding one (the
        end of every run kills them) would leave it in /dev/shm, which is RAM, until the node restarts."""
        if self.calls is not None:
            call_each(self.calls.actors, lambda actor: actor.release_shared.remote(), self.calls.timeout_s)
        self._last = None
        self._staging.clear()
        self._shared = {}
        self.session = uuid.uuid4().hex  # a later send shares afresh, under a session the actors have not mapped

    def buckets(self, weights: Any) -> Iterator[SharedTensors]:
        """The weights as SharedTensors, one staging bucket's worth at a time: a bucket is valid until
        the next one is asked for (its staging is then reused)."""
        views: dict[str, tuple] = {}
        devices: set[torch.device] = set()  # the GPUs whose memory this bucket names
        bucket = bucket_bytes_for(weights, self.bucket_bytes)
        for names, run_bytes in fused_runs(weights):  # a fused layer's parameters go in one bucket
            if any(staging.used and not staging.fits(run_bytes) for staging in self._staging.values()):
                yield self._flush(views, devices)  # full: hand this bucket over, then reuse the buffer
                views, devices = {}, set()
            for name in names:
                source = weights.source(name)
                dtype = weights.target_dtype(source)
                if not (source.dtype == dtype and weights.persistent(name) and source.device.type in ("cpu", "cuda")):
                    source = self._staging_for(source.device, run_bytes, bucket).put(source, dtype)
                views[name] = self._view(source)  # the learner's own memory (no copy), or the staging buffer
                if source.is_cuda:
                    devices.add(source.device)
        if views:
            yield self._flush(views, devices)

    def _view(self, tensor: torch.Tensor) -> tuple:
        shape, stride = tuple(tensor.shape), tuple(tensor.stride())
        if tensor.numel() == 0:
            return (None, 0, shape, stride, tensor.dtype)
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._shared:
            opener = _opener(tensor)  # a CPU storage moves into shared memory here, in place: its address changes
            self._shared[storage.data_ptr()] = (opener, storage)
        return (storage.data_ptr(), tensor.storage_offset(), shape, stride, tensor.dtype)

    def _flush(self, views: dict[str, tuple], devices: set[torch.device]) -> SharedTensors:
        # A cached IPC handle carries no event of this sync: the optimizer's writes and the staging copies
        # are waited for here, before any actor reads.
        for device in devices:
            torch.cuda.current_stream(device).synchronize()
        for staging in self._staging.values():
            staging.used = 0
        keys = {view[0] for view in views.values()} - {None}
        return SharedTensors(self.session, {key: self._shared[key][0] for key in keys}, views)

    def _staging_for(self, device: torch.device, nbytes: int, bucket: int) -> Staging:
        staging = self._staging.get(device)
        # First use, or a tensor larger than a bucket (the buffer is empty then: just flushed or new).
        if staging is None or staging.nbytes < nbytes:
            size = max(bucket, aligned(nbytes))
            staging = self._staging[device] = Staging(size, device, shared=True)
        return staging

    def _stream(self, weights: Any, version: int, actors: Any) -> set[int]:
        """Every bucket to `actors`; returns those Ray restarted along the way."""
        indices = list(actors)
        handles = self.calls.actors
        restarted: set[int] = set()
        for bucket in self.buckets(weights):
            self.calls.run(
                lambda i, b=bucket: handles[i].load_shared.remote(b, version), indices, restore=restarted.add
            )
        return restarted

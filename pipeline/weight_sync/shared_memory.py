"""Weight sync through shared memory on one node: each actor copies straight from the learner's memory.

- CPU: the learner's weights are moved into POSIX shared memory once, in place (torch's file-system
  sharing: the learner keeps training on the same tensors), and every later sync sends only their
  file names: each actor maps them (once) and copies into its engine. One memcpy, no serialisation,
  no object store (benchmarks/weight_sync.py: within 1.5x of an in-process copy).
- GPU: CUDA IPC handles of the learner's tensors, so an actor on the learner's GPU copies device to
  device (the colocated layout; verl does the same for its hybrid engine).

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
    """name -> handle of a tensor in shared memory (CPU) or a CUDA IPC handle; picklable, a few bytes
    per tensor. The receiving actor (`WeightReceiver.load_shared`) turns it into tensors over the
    sender's memory with `attach`, valid until the call that received it returns (the sender then
    reuses its staging buffer)."""

    session: str
    handles: dict[str, tuple]

    def attach(self, mapped: dict[str, torch.UntypedStorage]) -> dict[str, torch.Tensor]:
        """The tensors, in the receiving process. `mapped`: that process's storages of this session by
        file name: a sync sends the same files every time (the learner's tensors, the staging buffer),
        so each is mapped once per session, not once per sync."""
        return {name: _rebuild(handle, mapped) for name, handle in self.handles.items()}


def _rebuild(handle: tuple, mapped: dict[str, torch.UntypedStorage]) -> torch.Tensor:
    kind = handle[0]
    if kind == "empty":
        _, shape, dtype = handle
        return torch.empty(shape, dtype=dtype)
    if kind == "cpu":
        _, manager, filename, nbytes, offset, shape, stride, dtype = handle
        storage = mapped.get(filename)
        if storage is None:
            storage = mapped[filename] = attach_cpu_storage(manager, filename, nbytes)
        return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)
    _, gpu_uuid, args = handle
    return open_cuda_ipc(args, _local_device_index(gpu_uuid))


def _local_device_index(gpu_uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == gpu_uuid:
            return i
    raise RuntimeError(f"rollout.weight_sync=shared_memory: this actor does not see the learner's GPU {gpu_uuid}: "
                       "CUDA IPC only reaches actors on the learner's GPU (use weight_sync: broadcast)")


def _cpu_handle(tensor: torch.Tensor) -> tuple:
    manager, filename, nbytes = share_cpu_storage(tensor)  # in place; no-op once shared
    return ("cpu", manager, filename, nbytes, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype)


def _cuda_handle(tensor: torch.Tensor) -> tuple:
    return ("cuda", str(torch.cuda.get_device_properties(tensor.device).uuid), cuda_ipc_handle(tensor))


def _handle(tensor: torch.Tensor) -> tuple:
    if tensor.numel() == 0:
        return ("empty", tuple(tensor.shape), tensor.dtype)
    return _cuda_handle(tensor) if tensor.is_cuda else _cpu_handle(tensor)


class SharedMemorySync:
    """The learner's side; see the module docstring."""

    def __init__(self, calls: ActorCalls, bucket_bytes: int = 512 << 20):
        self.calls = calls
        self.bucket_bytes = bucket_bytes
        self.session = uuid.uuid4().hex
        self._staging: dict[torch.device, Staging] = {}
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

    def buckets(self, weights: Any) -> Iterator[SharedTensors]:
        """The weights as SharedTensors, one staging bucket's worth at a time: a bucket is valid until
        the next one is asked for (its staging is then reused)."""
        handles: dict[str, tuple] = {}
        bucket = bucket_bytes_for(weights, self.bucket_bytes)
        for names, run_bytes in fused_runs(weights):  # a fused layer's parameters go in one bucket
            if any(staging.used and not staging.fits(run_bytes) for staging in self._staging.values()):
                yield self._flush(handles)  # full: hand this bucket over, then reuse the buffer
                handles = {}
            for name in names:
                source = weights.source(name)
                dtype = weights.target_dtype(source)
                if source.dtype == dtype and weights.persistent(name) and source.device.type in ("cpu", "cuda"):
                    handles[name] = _handle(source)  # the learner's own memory: no copy
                    continue
                handles[name] = _handle(self._staging_for(source.device, run_bytes, bucket).put(source, dtype))
        if handles:
            yield self._flush(handles)

    def _flush(self, handles: dict[str, tuple]) -> SharedTensors:
        for staging in self._staging.values():
            if staging.used and staging.device.type == "cuda":
                torch.cuda.current_stream(staging.device).synchronize()  # the copies are done before anyone reads
            staging.used = 0
        return SharedTensors(self.session, handles)

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
            self.calls.run(lambda i, b=bucket: handles[i].load_shared.remote(b, version), indices,
                           restore=restarted.add)
        return restarted

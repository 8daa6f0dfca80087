"""Every use of torch's private internals, behind named functions (the weight transports need them).

- POSIX shared memory for CPU tensors, by file name (`torch.multiprocessing`'s file_system strategy,
  driven directly so a storage is shared in place, once, and mapped by name in another process);
- CUDA IPC handles (`torch.multiprocessing.reductions`, what `torch.multiprocessing` pickles CUDA
  tensors with), so an actor on the learner's GPU copies straight from its memory;
- process groups built as backend objects over a store, apart from torch.distributed's global state
  (the learner's group with its rollout actors lives beside a distributed learner's default group).

Written against torch 2.13 (constraints.txt); tests/test_layers.py keeps these internals in this module.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch


def share_cpu_storage(tensor: torch.Tensor) -> tuple[bytes, bytes, int]:
    """Move `tensor`'s storage into POSIX shared memory in place (a no-op once shared: the tensor keeps
    its data and its users) and return what maps it elsewhere: (manager, file name, size in bytes)."""
    return tensor.untyped_storage()._share_filename_cpu_()


def attach_cpu_storage(manager: bytes, filename: bytes, nbytes: int) -> torch.UntypedStorage:
    """The storage another process of this node shared by `share_cpu_storage`, mapped here."""
    return torch.UntypedStorage._new_shared_filename_cpu(manager, filename, nbytes)


def new_shared_storage(nbytes: int) -> torch.UntypedStorage:
    """A new CPU storage in POSIX shared memory (unlinked once every process that maps it lets go)."""
    return torch.UntypedStorage._new_using_filename_cpu(nbytes)


def cuda_ipc_handle(tensor: torch.Tensor) -> tuple:
    """What opens the whole storage of `tensor` (on a CUDA device) in another process: `open_cuda_ipc`'s
    argument. torch registers the memory for IPC and records an event each time: make it once per storage."""
    from torch.multiprocessing.reductions import reduce_tensor

    whole = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(tensor.untyped_storage())  # [nbytes]
    _, args = reduce_tensor(whole)
    return args


def open_cuda_ipc(handle: tuple, device_index: int) -> torch.UntypedStorage:
    """The storage `cuda_ipc_handle` described, over the sender's memory, on this process's device
    `device_index` (the sender's own index means nothing under this process's visible devices)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    args = list(handle)
    args[6] = device_index
    return rebuild_cuda_tensor(*args).untyped_storage()


def process_group(backend: str, store: Any, rank: int, world_size: int, timeout: timedelta) -> Any:
    """A gloo or NCCL process group as a backend object over `store` (a PrefixStore), with `timeout`."""
    if backend == "gloo":
        from torch.distributed.distributed_c10d import ProcessGroupGloo

        return ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        from torch.distributed import ProcessGroupNCCL

        options = ProcessGroupNCCL.Options()
        options._timeout = timeout
        return ProcessGroupNCCL(store, rank, world_size, options)
    raise ValueError(f"backend must be one of ('nccl', 'gloo'), got {backend!r}")

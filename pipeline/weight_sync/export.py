"""What a weight sync sends: the policy's weights as a rollout engine loads them, produced one tensor
at a time (`PolicyWeights`), and their packing for Ray's object store (`PackedState`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from adapters.torch import new_shared_storage

# dtypes numpy lacks: sent as same-width integers and viewed back on arrival
_BIT_VIEWS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e5m2: torch.int8}
_PEFT_PREFIX = "base_model.model."


class PolicyWeights(Mapping[str, torch.Tensor]):
    """The policy's full weights as a rollout engine loads them, materialised lazily, one tensor per
    lookup, where the learner holds them (its GPU, or the CPU).

    - Full state dict: tied copies included (e.g. lm_head.weight), so engines with a separate output
      head (vLLM) never keep a stale one.
    - A PEFT (LoRA) policy is merged functionally: an adapted layer's weight is its base weight plus
      the adapters' deltas (PEFT's get_delta_weight), under the base model's key names; the training
      model is not touched.
    - A sharded learner (FSDP2's DTensors, DeepSpeed ZeRO-3's partitioned parameters) is gathered
      tensor by tensor (`full_tensor`, `GatheredParameters`: collectives, so every rank must look the
      tensors up in the same order, which iteration order gives).
    - `dtype` (None: the learner's): floating tensors are cast to it on lookup; transports that copy
      into a buffer anyway cast while copying (`source` + `target_dtype`), so no cast copy is made.

    Nothing is held beyond one tensor, so the peak extra memory of a sync is the transport's bucket,
    never a second copy of the policy.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None):
        self.model = model  # the module read (a colocated engine generates with it directly)
        self.dtype = dtype
        # References to the live tensors (or shards), no copies. ZeRO-3 keeps what a parameter is (its
        # partition and how to gather it) on the Parameter itself, which a plain state_dict() drops.
        self._state = model.state_dict(keep_vars=_zero3_partitioned(model))
        self._lora = _lora_layers(model)  # base-layer weight key -> its LoraLayer
        self._names = {_engine_name(k): k for k in self._state if ".lora_" not in k}

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.source(name)
        target = self.target_dtype(tensor)
        return tensor if tensor.dtype == target else tensor.to(target)

    def source(self, name: str) -> torch.Tensor:
        """The tensor for `name` in the learner's dtype: its own storage where it can be (see `persistent`)."""
        key = self._names[name]
        value = self._state[key].detach()
        if hasattr(value, "full_tensor"):  # a DTensor shard (FSDP2): all ranks gather it together
            value = value.full_tensor()
        elif hasattr(self._state[key], "ds_id"):  # a ZeRO-3 partition: all ranks gather it together
            value = _zero3_gathered(self._state[key])
        layer = self._lora.get(key)
        if layer is not None:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    value = value + layer.get_delta_weight(adapter).detach()
        return value

    @property
    def sharded(self) -> bool:
        """True for a sharded learner (FSDP2, ZeRO-3): reading a tensor is a collective every rank takes part in."""
        return any(_is_shard(v) for v in self._state.values())

    def persistent(self, name: str) -> bool:
        """True when `source(name)` is the learner's own tensor (not a gathered or merged copy): a
        transport may then share its memory with the engines instead of copying it."""
        key = self._names[name]
        return key not in self._lora and not _is_shard(self._state[key])

    def target_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        return self.dtype if self.dtype is not None and tensor.is_floating_point() else tensor.dtype

    def meta(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(name, dtype as sent, shape) of every tensor, without materialising any."""
        out = []
        for name, key in self._names.items():
            value = self._state[key]
            out.append((name, self.target_dtype(value), tuple(getattr(value, "ds_shape", value.shape))))
        return out


def as_weights(state: Mapping[str, torch.Tensor]) -> Any:
    """`state` with PolicyWeights' interface (a plain dict: nothing persistent, no cast)."""
    return state if isinstance(state, (PolicyWeights, _PlainWeights)) else _PlainWeights(state)


class _PlainWeights(Mapping[str, torch.Tensor]):
    dtype = None
    sharded = False

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self._state = state

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._state[name]

    def source(self, name: str) -> torch.Tensor:
        return self._state[name].detach()

    def persistent(self, name: str) -> bool:
        return False  # whoever built the dict may drop or reuse its tensors: copy them

    def target_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        return tensor.dtype

    def meta(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(name, t.dtype, tuple(t.shape)) for name, t in self._state.items()]


def check_rereadable(weights: Any, learner_thread: Any, actor: int, transport: str) -> None:
    """A transport that restores a restarted actor by reading the learner's weights again (they are the
    live tensors, no copy is kept) can do so only between optimizer steps, from the thread that syncs,
    and only from a learner that is not sharded (reading a sharded tensor is a collective the other
    ranks are not in). Anything else is an ActorFailureError: the run resumes from its checkpoint."""
    import threading

    from rl.errors import ActorFailureError

    if threading.current_thread() is not learner_thread:
        raise ActorFailureError(
            f"rollout actor {actor} restarted while generating ahead (rollout.overlap); with "
            f"{transport} its weights can only be restored between steps"
        )
    if weights.sharded:
        raise ActorFailureError(
            f"rollout actor {actor} restarted mid-step and the learner is sharded: with "
            f"{transport} its weights can only be given to it at the next sync"
        )


def _is_shard(value: torch.Tensor) -> bool:
    return hasattr(value, "full_tensor") or hasattr(value, "ds_id")


def _zero3_partitioned(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _zero3_gathered(param: torch.nn.Parameter) -> torch.Tensor:
    """A ZeRO-3 parameter's full value (a copy: the gathered storage is freed again on leaving)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([param]):
        return param.detach().clone()


def _engine_name(key: str) -> str:
    return key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")


def _lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    if not getattr(model, "peft_config", None):
        return {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no PEFT installed: no adapters to merge
        return {}
    return {
        f"{name}.base_layer.weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and not module.merged and module.active_adapters
    }


ALIGN = 256  # bytes: every staged tensor starts on this boundary (any dtype's alignment)


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def fused_layer(name: str) -> str:
    """The module a parameter's layer may be fused into by an engine: vLLM loads q/k/v into one qkv_proj
    and gate/up into one gate_up_proj, siblings under one parent ("model.layers.3.self_attn.q_proj.weight"
    -> "model.layers.3.self_attn")."""
    return name.rsplit(".", 2)[0]


def fused_runs(weights: Any) -> Iterator[tuple[list[str], int]]:
    """The names of `weights` in order, in runs that share a `fused_layer`, each with its bytes as sent
    (aligned). A bucket never splits a run: vLLM reloads each bucket in its own session, and a fused layer
    loaded in part is materialised whole, the unloaded part uninitialised memory, before it replaces the
    live weights (vllm/model_executor/model_loader/reload/layerwise.py, "Delayed processing")."""
    names: list[str] = []
    nbytes = 0
    for name, dtype, shape in weights.meta():
        if names and fused_layer(name) != fused_layer(names[-1]):
            yield names, nbytes
            names, nbytes = [], 0
        names.append(name)
        nbytes += aligned(math.prod(shape) * dtype.itemsize)
    if names:
        yield names, nbytes


def bucket_bytes_for(weights: Any, bucket_bytes: int) -> int:
    """A staging bucket's size: `bucket_bytes`, or the whole policy as sent where that is smaller (a
    tiny or test policy must not pin a 512 MiB buffer in shared memory or on the GPU)."""
    total = sum(aligned(math.prod(shape) * dtype.itemsize) for _, dtype, shape in weights.meta())
    return min(bucket_bytes, total)


class Staging:
    """A reusable byte buffer that tensors are copied (and cast) into, bucket after bucket, by the
    transports that send buckets. `shared`: in POSIX shared memory (CPU; other processes on the node
    can map it); on a GPU, device memory."""

    def __init__(self, nbytes: int, device: torch.device, shared: bool = False):
        self.device = device
        if device.type == "cpu" and shared:
            storage = new_shared_storage(nbytes)
            self.buffer = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,), (1,))  # [nbytes]
        else:
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)  # [nbytes]
        self.used = 0

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def fits(self, nbytes: int) -> bool:
        return aligned(self.used) + nbytes <= self.nbytes

    def put(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`tensor` cast to `dtype` in the next free bytes; returns that view."""
        start = aligned(self.used)
        nbytes = tensor.numel() * dtype.itemsize
        view = self.buffer[start : start + nbytes].view(dtype).view(tensor.shape)
        view.copy_(tensor)  # cast while copying: no intermediate copy
        self.used = start + nbytes
        return view

    def filled(self) -> torch.Tensor:
        """The bytes put since the last reset: [used]."""
        return self.buffer[: self.used]


class PackedState(Mapping[str, torch.Tensor]):
    """A state dict held as numpy arrays, for Ray's object store.

    Ray hands numpy arrays to the receiving actor zero-copy, straight from shared memory, while torch
    tensors are pickled through an extra copy: packing as numpy made a learner -> actor sync about 3x
    faster on this project's CPU machine (100 MB: 0.35 s -> 0.12 s, benchmarks/weight_sync.py). numpy
    has no bfloat16, so 16-bit floats travel as int16 bit patterns. Reading it gives tensors again:
    read-only views of the shared memory (engines copy from them, never into them), so an engine's
    `load_weights` takes it like any other state dict.
    """

    def __init__(self, arrays: dict[str, tuple[Any, str]]):
        self._arrays = arrays  # name -> (numpy array, torch dtype name)

    @classmethod
    def pack(cls, state: Mapping[str, torch.Tensor]) -> PackedState:
        """Every tensor of `state` moved to the CPU (and cast, for PolicyWeights) in one copy."""
        weights = as_weights(state)
        arrays = {}
        for name in weights:
            source = weights.source(name)
            t = source.to("cpu", weights.target_dtype(source)).contiguous()
            view = _BIT_VIEWS.get(t.dtype)
            arrays[name] = ((t.view(view) if view is not None else t).numpy(), str(t.dtype).removeprefix("torch."))
        return cls(arrays)

    def __getitem__(self, name: str) -> torch.Tensor:
        array, dtype_name = self._arrays[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable": we only read
            t = torch.from_numpy(array)
        dtype = getattr(torch, dtype_name)
        return t if t.dtype == dtype else t.view(dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

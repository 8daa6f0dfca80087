"""What a weight sync sends: the policy's state dict as a rollout engine loads it, and its packing
for Ray's object store."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

# dtypes numpy lacks: sent as same-width integers and viewed back on arrival
_BIT_VIEWS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e5m2: torch.int8}


def policy_state_dict(model: Any, on_cpu: bool = True, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The policy's full weights as a rollout engine loads them, on the CPU (or where they are:
    `on_cpu=False`, for a broadcast from the learner's GPU), in `dtype` (None: the learner's; bfloat16
    engines beside float32 master weights get half the bytes, cast tensor by tensor).

    Full state dict: it includes tied copies (e.g. lm_head.weight), so engines with a separate
    output head (vLLM) do not keep a stale one. A PEFT (LoRA) policy is merged functionally: each
    adapted layer's base weight plus its adapter delta (PEFT's get_delta_weight), under the base
    model's key names; the training model is not touched (no merge/unmerge round trip in place).
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        LoraLayer = None  # noqa: N806 (no PEFT installed: no adapters to merge)
    deltas: dict[str, Any] = {}
    if LoraLayer is not None and getattr(model, "peft_config", None):
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter).detach()
                        deltas[name] = deltas[name] + delta if name in deltas else delta
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        value = value.detach()
        if key.endswith(".base_layer.weight") and key[: -len(".base_layer.weight")] in deltas:
            value = value + deltas[key[: -len(".base_layer.weight")]]
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value.cpu() if on_cpu else value
    return state


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
        arrays = {}
        for name, tensor in state.items():
            t = tensor.detach().cpu().contiguous()
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

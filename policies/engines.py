"""Pick a rollout engine from config: (factory, kwargs) that an actor calls to build it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BACKENDS = ("hf", "vllm")


def engine_factory(rollout: Any, policy: Any, policy_path: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """`rollout` is an `rl.config.RolloutConfig`, `policy` a `PolicyConfig`."""
    if rollout.weight_transfer and rollout.backend != "vllm":
        raise ValueError(f"rollout.weight_transfer={rollout.weight_transfer!r} is vLLM's weight-transfer engine: it "
                         f"needs rollout.backend=vllm (got {rollout.backend!r})")
    if rollout.backend == "hf":
        from policies.hf_engine import HFEngine

        return HFEngine.from_pretrained, dict(path=policy_path, dtype=policy.dtype, device=rollout.device,
                                              max_pixels=policy.max_pixels,
                                              trust_remote_code=policy.trust_remote_code)
    if rollout.backend == "vllm":
        from policies.vllm_engine import VLLMEngine

        return VLLMEngine, dict(path=policy_path, dtype=policy.dtype, max_pixels=policy.max_pixels,
                                engine_kwargs=dict(rollout.vllm), sync_timeout_s=rollout.timeout_s,
                                weight_transfer=rollout.weight_transfer)
    raise ValueError(f"rollout.backend must be one of {BACKENDS}, got {rollout.backend!r}")

"""The rollout engine protocol: what every generation backend (transformers, vLLM) provides.

An engine turns chat prompts with images into completions, each with its token ids, per-token
log-probabilities and the policy version that produced it, and accepts new weights with a version.
The choice of backend is configuration (`rollout.backend`); the RL loop only sees this protocol.
Rollout actors host engines (with the pipeline's actor mixins in front), so every call the rollout
pool and the weight transports make on an engine is one of the methods listed here:
`actor.generate.remote(...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 16
    min_tokens: int = 0  # EOS is suppressed until this many tokens exist
    # Request i of a call samples with seed + i * n (+ j for its j-th sample, as vLLM does), so every
    # (prompt, sample) of a call has its own seed; None: unseeded.
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # extra stop strings (EOS always stops)
    logprobs: bool = True  # report each token's log-probability (held-out evaluation needs none)
    # Also report the k most likely tokens' log-probabilities at each position (a judge reads its verdict's
    # distribution from them); 0: none.
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def request_seed(self, i: int) -> int | None:
        """The seed of request i of a call (its samples use this + 0 .. n-1)."""
        return None if self.seed is None else self.seed + i * self.n


@dataclass
class RolloutRequest:
    """One prompt: chat messages (image parts may carry the image or be placeholders) + its images."""

    messages: list[dict]
    images: list[Any] = field(default_factory=list)


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # log p(token) under the sampling distribution (temperature applied), per token
    text: str
    version: int  # the policy version whose weights produced this completion
    finish_reason: str = "length"  # "stop" when EOS or a stop string ended it
    # With SamplingParams.top_logprobs = k: per generated token, {token id: log-probability} of the k most
    # likely tokens at that position.
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the rollout pool and every weight-sync transport call on an engine."""

    version: int

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        """For each request, `sampling.n` rollouts, in request order."""
        ...

    def load_weights(self, named_tensors: Mapping[str, Any], version: int) -> None:
        """Replace the engine's weights (all or a subset, by parameter name) and set its version."""
        ...

    def loaded_version(self) -> int:
        """The policy version of the weights the engine holds."""
        ...

    def weights_device(self) -> str:
        """Where the engine's weights live: "cpu", or "cuda" / "cuda:N" (of this process's visible
        devices). `rollout.weight_sync: auto` chooses its transport from this."""
        ...


def indexed_device(device: str | torch.device) -> torch.device:
    """`device` with its index: a bare "cuda" is this process's current CUDA device. What a broadcast
    receiver pins (`torch.cuda.set_device` refuses a device without an index) and compares."""
    device = torch.device(device)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, torch.get_device_module(device.type).current_device())
    return device

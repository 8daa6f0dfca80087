"""The rollout engine protocol: what every generation backend (transformers, vLLM) provides.

An engine turns chat prompts with images into completions, each with its token ids, per-token
log-probabilities and the policy version that produced it, and accepts new weights with a version.
The choice of backend is configuration (`rollout.backend`); the RL loop only sees this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 16
    min_tokens: int = 0  # EOS is suppressed until this many tokens exist
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # extra stop strings (EOS always stops)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


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


@runtime_checkable
class RolloutEngine(Protocol):
    version: int

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        """For each request, `sampling.n` rollouts, in request order."""
        ...

    def load_weights(self, named_tensors: dict[str, Any], version: int) -> None:
        """Replace the engine's weights (all or a subset, by parameter name) and set its version."""
        ...

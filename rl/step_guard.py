"""Numerical guard: an optimizer step whose gradient is not finite is skipped and counted, never applied.

A NaN or inf anywhere upstream (a reward, an advantage, the loss) ends up in the gradient, so one
check right before `optimizer.step()` covers them all. Non-finite rewards are already turned into
counted failures by `reward.failures.GuardedReward`; this catches what gets past it (overflowing logits,
a custom loss). Past `max_skipped` skipped steps the run stops (the recipe checkpoints first).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from transformers import TrainerCallback

from rl.errors import NonFiniteStepError

__all__ = ["NonFiniteGuard", "NonFiniteStepError", "grads_finite"]

log = logging.getLogger(__name__)


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every existing gradient is free of NaN/inf (one reduction per tensor)."""
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


class NonFiniteGuard(TrainerCallback):
    """Drops the gradient of a non-finite step, so the optimizer leaves every parameter as it was."""

    def __init__(self, max_skipped: int = 3):
        if max_skipped < 0:
            raise ValueError(f"max_skipped_steps must be >= 0, got {max_skipped}")
        self.max_skipped = max_skipped
        self.skipped_steps: list[int] = []  # the global steps (1-based, as logged) that were skipped

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if grads_finite(params):
            return
        # Optimizers skip parameters without a gradient: no update, no moment or step-count change.
        optimizer.zero_grad(set_to_none=True)
        step = state.global_step + 1
        self.skipped_steps.append(step)
        log.warning(
            "step %d: non-finite gradient (NaN/inf in the loss, advantages or rewards); "
            "the update is skipped (%d skipped so far, limit %d)",
            step,
            len(self.skipped_steps),
            self.max_skipped,
        )
        if len(self.skipped_steps) > self.max_skipped:
            raise NonFiniteStepError(
                f"{len(self.skipped_steps)} optimizer steps had non-finite gradients "
                f"(steps {self.skipped_steps}; max_skipped_steps={self.max_skipped}): "
                f"the run is diverging. Lower the learning rate or check the rewards."
            )

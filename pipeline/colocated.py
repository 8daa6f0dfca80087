"""A colocated rollout engine (`rollout.colocate: true`, transformers backend): generation on the
learner's own model, in the learner's process, on its GPU.

The engine holds no weights of its own: it generates with the module the learner trains (LoRA
adapters and all), so there is no second copy of the policy in memory and nothing to sync; a
"sync" only points the engine at the learner's current module and records the version. The KV
cache lives only while `generate` runs and is handed back to the GPU right after, so the learner
trains with the memory it had. Generation runs in eval mode (restored afterwards) and, with
`rollout.dtype: bfloat16` beside float32 master weights, under bfloat16 autocast: bf16 compute on
fp32 weights, as the learner's own forward with `trainer.bf16`.

Weights that change under generation would mix policies, so a colocated engine generates only
between optimizer steps: `rollout.overlap` and `rollout.sync_every > 1` are refused with it (the
`check_colocate`). vLLM engines do not colocate here: vLLM's sleep mode (what frees an engine's memory
while the learner trains) needs CUDA, and this project has no lane that runs vLLM on a GPU; vLLM
engines run as actors with a GPU share of their own.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from policies.hf_engine import HFEngine
from policies.rollout_engine import Rollout, RolloutRequest, SamplingParams
from rl.config import ConfigError


def check_colocate(rollout: Any, ray_enabled: bool) -> None:
    """A colocated config that cannot work is refused before anything loads."""
    if not rollout.colocate:
        return
    if not ray_enabled:
        raise ConfigError(
            "rollout.colocate is an option of the Ray pipeline (ray.enabled: true); without Ray, TRL "
            "already generates on the learner's model in this process"
        )
    if rollout.backend != "hf":
        raise ConfigError(
            "rollout.colocate works with rollout.backend=hf: vLLM's sleep mode needs CUDA and is not "
            "run by this project's lanes; give vLLM actors a GPU share of their own instead"
        )
    if rollout.overlap or rollout.sync_every != 1:
        raise ConfigError(
            "rollout.colocate generates with the learner's live weights, so it generates between steps "
            "only: it needs rollout.overlap=false and rollout.sync_every=1"
        )


class ColocatedPool:
    """The rollout pool's interface (generate, load_weights, version) over an HFEngine on the learner's
    live model."""

    restarts = 0  # no actors: nothing to restart

    def __init__(self, model: torch.nn.Module, processor: Any, dtype: torch.dtype | None = None):
        was_training = model.training
        # No copy and no device of its own: `model` itself, wherever the Trainer puts it (on `args.device`,
        # after this pool is built); the engine reads the device from the model at every call.
        self.engine = HFEngine(model, processor)
        model.train(was_training)
        self.dtype = dtype
        self.version = 0

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        model = self.engine.model
        was_training = model.training
        device = self.engine.device
        autocast = (
            torch.autocast(device.type, dtype=self.dtype)
            if self.dtype is not None and self.dtype != next(model.parameters()).dtype
            else nullcontext()
        )
        model.eval()
        try:
            with autocast:
                return self.engine.generate(requests, sampling)
        finally:
            model.train(was_training)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the KV cache goes back before the learner trains

    def load_weights(self, weights: Any, version: int) -> None:
        """`weights` is the learner's PolicyWeights: the engine generates with its module from now on."""
        self.engine.model = weights.model
        self.engine.version = self.version = version

    def versions(self) -> list[int]:
        return [self.version]

    def close(self) -> None:
        pass

"""Wire TRL's GRPOTrainer: our YAML `trainer:` section -> GRPOConfig, reward functions, rollout hook.

TRL owns the GRPO algorithm (advantages, clipping, KL, loss types, optimizer); this module only
chooses defaults that work on a CPU and plugs in what this project adds.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

log = logging.getLogger(__name__)


def device_defaults() -> dict[str, Any]:
    """Settings that differ between a CPU box and a GPU node; the YAML can override each."""
    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": False}


def grpo_args(output_dir: str, seed: int, trainer: dict[str, Any]) -> GRPOConfig:
    kwargs: dict[str, Any] = {
        **device_defaults(),
        "logging_steps": 1,
        "report_to": ["tensorboard"],
        "save_strategy": "no",  # the recipe turns checkpoints on from its `checkpoint:` section
        "dataloader_num_workers": 0,
        **trainer,
        "output_dir": output_dir,
        "seed": seed,
    }
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know
    return GRPOConfig(**kwargs)


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, with the shuffle of epoch e seeded by (seed, e).

    TRL's draws every epoch's order from one generator, which a new process restarts: a run resumed in
    epoch 2 would replay epoch 0's order. Seeding per epoch makes a resumed run read exactly the data
    an uninterrupted one reads. The Trainer calls `set_epoch` (through accelerate's DataLoaderShard)
    before each epoch.
    """

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        yield from super().__iter__()

    def epoch_order(self, epoch: int) -> list[int]:
        """The dataset indices epoch `epoch` yields, without disturbing this sampler (for prefetching).

        Asked for every step with overlapped rollouts; the last epoch's order is kept, so the
        permutation is drawn once per epoch, not once per step."""
        cached = self.__dict__.get("_order")
        if cached is None or cached[0] != epoch:
            other = copy.copy(self)
            other.generator, other.epoch = torch.Generator(), epoch
            cached = self._order = (epoch, list(iter(other)))
        return cached[1]


class ResumableGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that resumes exactly (the data order, the weights) and can correct stale rollouts.

    `rollout_logprobs_as_old`: when rollouts may come from older weights (weights synced every k
    steps, or generated one step ahead), the PPO ratio's "old" policy is the one that actually sampled
    them: the rollout engine's log-probabilities replace the learner's recomputed ones. The ratio is
    then the importance weight pi_theta / pi_behaviour, clipped as usual (decoupled PPO; the role TRL's
    vLLM importance-sampling correction plays, which TRL only applies to its own vLLM path).
    """

    rollout_logprobs_as_old = False
    train_sampler: EpochSeededRepeatSampler | None = None

    def _get_train_sampler(self, dataset: Any = None) -> RepeatSampler:
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = EpochSeededRepeatSampler  # same fields, per-epoch seeding
        if dataset is None or dataset is self.train_dataset:
            self.train_sampler = sampler
        return sampler

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.rollout_logprobs_as_old and output.get("sampling_per_token_logps") is not None:
            output["old_per_token_logps"] = output["sampling_per_token_logps"]  # [B, T], 0 where masked
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # The Trainer reads model.safetensors with the runtime key names, but save_pretrained writes
        # Qwen2-VL / Qwen2.5-VL weights under their legacy names (the model's key mapping), so its
        # load silently matches nothing and training "resumes" from the initial weights (seen with
        # transformers 5.19 and 5.23). from_pretrained applies the mapping; copy its tensors in, strictly.
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(model, torch.nn.Module) or not hasattr(type(model), "from_pretrained") or \
                getattr(model, "peft_config", None):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        log.info("policy weights restored from %s", resume_from_checkpoint)


def planned_steps(trainer: GRPOTrainer) -> int:
    """Optimizer steps the run will take: max_steps, or the epochs' worth of the train dataloader."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, len(trainer.get_train_dataloader()) // args.gradient_accumulation_steps)
    return math.ceil(args.num_train_epochs * per_epoch)


def build_grpo_trainer(args: GRPOConfig, model: torch.nn.Module, processor: Any, train_dataset: Any,
                       reward_funcs: list[Callable], rollout_func: Callable | None = None,
                       callbacks: list | None = None, eval_dataset: Any = None,
                       lora: dict[str, Any] | None = None) -> GRPOTrainer:
    """`lora`: peft.LoraConfig keyword arguments; TRL wraps the policy with the adapter (None: full tuning)."""
    peft_config = None
    if lora:
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError("policy.lora needs PEFT: pip install 'basereward-rl[lora]'") from e
        peft_config = LoraConfig(**{"task_type": "CAUSAL_LM", **lora})
    return ResumableGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        rollout_func=rollout_func,
        callbacks=callbacks,
        peft_config=peft_config,
    )

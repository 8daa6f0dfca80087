"""Wire TRL's GRPOTrainer: our YAML `trainer:` section -> GRPOConfig, reward functions, rollout hook.

TRL owns the GRPO algorithm (advantages, clipping, KL, loss types, optimizer); this module only
chooses defaults that work on a CPU and plugs in what this project adds, through TRL's public API.
What needs TRL's internals lives in adapters/trl.py.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from adapters.trl import GRPOLearner
from policies.loading import VisionLRMixin

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


HALF_DTYPES = ("bfloat16", "float16")


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a checkpoint stores its weights in (what `dtype: auto` loads), when its config says."""
    from policies.known_models import config_dtype, model_config

    try:
        return config_dtype(model_config(path))
    except ValueError:  # not local, not a known shape, and no hub: cannot tell
        return None


def check_update_precision(policy: Any, trainer: dict[str, Any], section: str) -> None:
    """Refuse trained weights held in 16 bits with an optimizer that keeps no fp32 state.

    AdamW's update of a bfloat16 weight is rounded to bfloat16: an update smaller than half a unit in
    the last place (2^-9 of the weight's magnitude) vanishes, so at RL learning rates (1e-6) most
    weights never move. Measured on an H100 with the 3.75B policy: 1.8% of a layer's weights changed
    in two steps. float32 master weights with bf16 compute (what TRL does by default) move them all.
    LoRA is exempt: PEFT keeps the trained adapters in float32 and the 16-bit base frozen."""
    if policy.lora:
        return
    dtype = checkpoint_dtype(policy.path) if policy.dtype == "auto" else policy.dtype
    if dtype not in HALF_DTYPES:
        return
    optim, optim_args = trainer.get("optim", ""), str(trainer.get("optim_args") or "").replace(" ", "").lower()
    if optim == "adamw_anyprecision" and "use_kahan_summation=true" in optim_args:
        return  # compensated (Kahan) summation keeps the lost low bits
    lr = trainer.get("learning_rate")
    raise ValueError(
        f"{section}.dtype={policy.dtype} keeps the trained weights in {dtype}, and with them the optimizer's "
        f"updates: an update below half a unit in {dtype}'s last place (about 2^-9 of a weight's magnitude for "
        f"bfloat16) is rounded away, so at learning_rate={lr if lr is not None else 'the default'} most weights "
        f"would never move (on an H100, 1.8% of a layer's weights changed in two steps at 1e-6). Keep float32 "
        f"master weights and compute in bf16: `{section}.dtype: float32` with `trainer.bf16: true` (TRL's "
        f"default), or train a LoRA adapter ({section}.lora), or use `trainer.optim: adamw_anyprecision` with "
        f"`trainer.optim_args: use_kahan_summation=True`."
    )


def planned_steps(trainer: GRPOTrainer) -> int:
    """Optimizer steps the run will take: max_steps, or the epochs' worth of the train dataloader."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, len(trainer.get_train_dataloader()) // args.gradient_accumulation_steps)
    return math.ceil(args.num_train_epochs * per_epoch)


class PolicyGRPOTrainer(VisionLRMixin, GRPOLearner):
    """The project's GRPO learner with the policy's `vision_lr` (as recipes/sft.py's PolicySFTTrainer)."""


def build_grpo_trainer(
    args: GRPOConfig,
    model: torch.nn.Module,
    processor: Any,
    train_dataset: Any,
    reward_funcs: list[Callable],
    rollout_func: Callable | None = None,
    callbacks: list | None = None,
    eval_dataset: Any = None,
    lora: dict[str, Any] | None = None,
    rollout_logprobs_as_old: bool = False,
    min_group_std: float = 0.0,
    vision_lr: float | None = None,
) -> GRPOLearner:
    """`lora`: peft.LoraConfig keyword arguments; TRL wraps the policy with the adapter (None: full tuning).
    `rollout_logprobs_as_old`: the rollout engine's log-probabilities are the PPO "old" policy;
    `min_group_std`: groups whose rewards spread no more than this get no advantage (GRPOLearner)."""
    peft_config = None
    if lora:
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError("policy.lora needs PEFT: pip install 'basereward-rl[lora]'") from e
        peft_config = LoraConfig(**{"task_type": "CAUSAL_LM", **lora})
    trainer = PolicyGRPOTrainer(
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
    trainer.rollout_logprobs_as_old = rollout_logprobs_as_old
    trainer.min_group_std = min_group_std
    trainer.vision_lr = vision_lr
    return trainer

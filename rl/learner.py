"""Wire TRL's GRPOTrainer: our YAML `trainer:` section -> GRPOConfig, reward functions, rollout hook.

TRL owns the GRPO algorithm (advantages, clipping, KL, loss types, optimizer); this module only
chooses defaults that work on a CPU and plugs in what this project adds, through TRL's public API.
What needs TRL's internals lives in rl/trl_adapter.py.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from rl.trl_adapter import GRPOLearner

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
                       lora: dict[str, Any] | None = None) -> GRPOLearner:
    """`lora`: peft.LoraConfig keyword arguments; TRL wraps the policy with the adapter (None: full tuning)."""
    peft_config = None
    if lora:
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError("policy.lora needs PEFT: pip install 'basereward-rl[lora]'") from e
        peft_config = LoraConfig(**{"task_type": "CAUSAL_LM", **lora})
    return GRPOLearner(
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

"""Supervised warm-up: teach a policy the answer format of its RL data before GRPO.

    brl sft recipes/configs/tiny_cpu_sft.yaml [key=value ...]

The paper starts GRPO from an SFT model; this recipe makes that starting point from the RL rows
themselves (prompt + images -> the reference response, else the ground-truth answer) with TRL's
SFTTrainer, loss on the response only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from policies.loading import VisionLRMixin, load_policy, load_processor
from rl.config import SFTRecipeConfig, load_config, to_yaml
from rl.data import load_rl_splits
from rl.learner import check_update_precision, device_defaults
from rl.models import resolve_model_path

log = logging.getLogger("brl.sft")


class PolicySFTTrainer(VisionLRMixin, SFTTrainer):
    """TRL's SFTTrainer with the policy's `vision_lr`."""


def load(path: str | None = None, overrides: Sequence[str] = ()) -> SFTRecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of TRL's SFTConfig."""
    return load_config(SFTRecipeConfig, path, overrides, passthrough={"trainer": SFTConfig})


def target(row: dict) -> str | None:
    """What SFT teaches for a row: its reference response where it has one (an open-ended question's
    description), else its answer."""
    return row.get("reference") or row.get("answer")


def to_prompt_completion(rows: Dataset) -> Dataset:
    """RL rows -> TRL's conversational prompt-completion format (rows with neither a reference nor an
    answer are dropped)."""
    rows = rows.filter(lambda r: target(r) is not None)
    return rows.map(
        lambda r: {"completion": [{"role": "assistant", "content": target(r)}]},
        remove_columns=[c for c in rows.column_names if c not in ("prompt", "images")],
    )


def sft_args(out: Path, seed: int, *trainer: dict) -> SFTConfig:
    """TRL's SFTConfig with this project's defaults (loss on the completion only, no checkpoints, no length
    cut), then the config's `trainer` sections in order, later keys winning. The judge's trainer uses it too."""
    defaults = {
        **device_defaults(),
        "logging_steps": 10,
        "report_to": ["tensorboard"],
        "save_strategy": "no",
        "completion_only_loss": True,
        "max_length": None,
    }
    overrides = {k: v for section in trainer for k, v in section.items()}
    return SFTConfig(**{**defaults, **overrides, "output_dir": str(out), "seed": seed})


def main(cfg: SFTRecipeConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    check_update_precision(cfg.policy, cfg.trainer, "policy")
    args = sft_args(out, cfg.seed, cfg.trainer)
    train, _ = load_rl_splits(cfg.data)
    policy_path = resolve_model_path(cfg.policy.path, out, cfg.seed)
    processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
    model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)
    trainer = PolicySFTTrainer(
        model=model, args=args, train_dataset=to_prompt_completion(train), processing_class=processor
    )
    trainer.vision_lr = cfg.policy.vision_lr
    result = trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    processor.save_pretrained(final)
    summary = {
        "final_policy": str(final),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("saved the warmed-up policy to %s (train loss %.3f)", final, result.training_loss)
    return summary

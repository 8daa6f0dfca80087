"""GRPO fine-tuning of a vision-language policy with pluggable rewards.

    brl grpo recipes/configs/tiny_cpu_rule.yaml [key=value ...]

Reads like a one-process program: load the policy and data, build the rewards, hand both to TRL's
GRPOTrainer, train, save. Rewards that fail are counted; a run that cannot be scored stops with the
policy saved, not with a traceback and nothing on disk.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from transformers import set_seed

from policies.loading import load_policy, load_processor, resolve_policy_path
from reward.build import build_reward_funcs
from reward.guard import RewardFailureError
from rl.config import GRPORecipeConfig, to_yaml
from rl.data import load_rl_splits
from rl.learner import build_grpo_trainer, grpo_args

log = logging.getLogger("brl.grpo")


def main(cfg: GRPORecipeConfig) -> dict:
    """Train; returns a summary dict (final metrics, where things were written)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)

    reward_funcs, reward_weights = build_reward_funcs(cfg.reward)
    args = grpo_args(str(out), cfg.seed, cfg.trainer, reward_weights)  # bad trainer keys fail here, early
    train, _ = load_rl_splits(cfg.data)

    policy_path = resolve_policy_path(cfg.policy.path, out, cfg.seed)
    processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
    model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)

    trainer = build_grpo_trainer(args, model, processor, train, reward_funcs)
    final = out / "final"
    try:
        result = trainer.train()
    except RewardFailureError as e:
        aborted = out / "aborted"
        trainer.save_model(str(aborted))
        processor.save_pretrained(aborted)
        log.error("stopped: %s\nthe policy as it was is saved in %s", e, aborted)
        raise
    trainer.save_model(str(final))
    processor.save_pretrained(final)
    summary = {
        "final_policy": str(final),
        "global_step": trainer.state.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "reward_failures": {f.__name__: f.stats.failed for f in reward_funcs},
        "log_history": trainer.state.log_history,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("saved the final policy to %s", final)
    return summary


if __name__ == "__main__":
    from rl.cli import main as cli

    sys.exit(cli(["grpo", *sys.argv[1:]]))

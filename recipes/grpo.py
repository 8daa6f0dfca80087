"""GRPO fine-tuning of a vision-language policy with pluggable rewards.

    brl grpo recipes/configs/tiny_cpu_hybrid.yaml [key=value ...]

Reads like a one-process program: load the policy and data, build the rewards, hand both to TRL's
GRPOTrainer, train, save. With `ray.enabled`, generation runs on rollout actors (weights synced
after optimizer steps) and the BaseReward scorer on its own actors; TRL stays the learner.
Rewards that fail are counted; a run that cannot be scored stops with the policy saved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from transformers import set_seed

from policies.chat import vision_token_ids
from policies.loading import load_policy, load_processor, resolve_policy_path
from reward.build import build_reward_funcs, check_model_paths, make_rule
from reward.guard import RewardFailureError
from reward.hybrid import HybridReward
from rl.config import GRPORecipeConfig, to_yaml
from rl.data import load_rl_splits
from rl.learner import build_grpo_trainer, grpo_args
from rl.metrics import ScoreHistogramCallback

log = logging.getLogger("brl.grpo")


def spawn_actors(cfg: GRPORecipeConfig, policy_path: str, stack: contextlib.ExitStack):
    """Rollout pool + reward proxies on Ray actors, killed when `stack` closes.

    Returns (rollout_func, scorer, rule); scorer/rule are None where they stay in this process."""
    from policies.engines import engine_factory
    from reward.build import make_local_scorer
    from rl.actors import kill_on_exit, spawn_group
    from rl.config import ActorGroupConfig
    from rl.pool import RemoteReward, RolloutPool
    from rl.rollout import ActorRollouts

    factory, kwargs = engine_factory(cfg.rollout, cfg.policy, policy_path)
    rollout_actors = kill_on_exit(stack, spawn_group("rollout", factory, kwargs, cfg.rollout.actors))
    pool = RolloutPool(rollout_actors, cfg.rollout.timeout_s)
    rollout_func = ActorRollouts(pool, cfg.rollout.sync_every, cfg.rollout.max_staleness,
                                 cfg.rollout.logprob_gap_samples)
    scorer = rule = None
    model_actors = cfg.reward.model.actors
    if cfg.reward.scheme in ("model", "hybrid") and model_actors.num_actors > 0:
        actors = kill_on_exit(stack, spawn_group("scorer", make_local_scorer, {"cfg": cfg.reward}, model_actors))
        scorer = RemoteReward(actors, "basereward", cfg.reward.timeout_s)
    if cfg.reward.rule.in_actor:
        actors = kill_on_exit(stack, spawn_group("rule", make_rule, {"cfg": cfg.reward},
                                                 ActorGroupConfig(num_actors=1, num_cpus=0.5)))
        rule = RemoteReward(actors, "rule", cfg.reward.timeout_s)
    return rollout_func, scorer, rule


def main(cfg: GRPORecipeConfig, callbacks: list | None = None) -> dict:
    """Train; returns a summary dict (final metrics, where things were written)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    args = grpo_args(str(out), cfg.seed, cfg.trainer)  # bad trainer keys fail here, before any model loads
    check_model_paths(cfg.reward)
    train, _ = load_rl_splits(cfg.data)
    policy_path = resolve_policy_path(cfg.policy.path, out, cfg.seed)

    with contextlib.ExitStack() as stack:
        rollout_func = scorer = rule = None
        if cfg.ray.enabled:
            from rl.actors import ray_session

            stack.enter_context(ray_session(cfg.ray.address, cfg.ray.num_cpus))
            rollout_func, scorer, rule = spawn_actors(cfg, policy_path, stack)
        reward_funcs, reward_weights = build_reward_funcs(cfg.reward, scorer=scorer, rule=rule)
        args.reward_weights = args.reward_weights or reward_weights

        processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
        if not rollout_func:  # TRL generates in this process: keep vision placeholders out of completions
            args.generation_kwargs = {"suppress_tokens": vision_token_ids(processor), **(args.generation_kwargs or {})}
        model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)
        callbacks = list(callbacks or [])
        hybrid = next((f.fn for f in reward_funcs if isinstance(f.fn, HybridReward)), None)
        if hybrid is not None and "tensorboard" in (args.report_to or []):
            callbacks.append(ScoreHistogramCallback(hybrid, out / "runs" / "reward_scores"))
        trainer = build_grpo_trainer(args, model, processor, train, reward_funcs, rollout_func=rollout_func,
                                     callbacks=callbacks)
        try:
            result = trainer.train()
        except RewardFailureError as e:
            aborted = out / "aborted"
            trainer.save_model(str(aborted))
            processor.save_pretrained(aborted)
            log.error("stopped: %s\nthe policy as it was is saved in %s", e, aborted)
            raise
        final = out / "final"
        trainer.save_model(str(final))
        processor.save_pretrained(final)
        summary = {
            "final_policy": str(final),
            "global_step": trainer.state.global_step,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "reward_failures": {f.__name__: f.stats.failed for f in reward_funcs},
            "rollout_version": rollout_func.pool.version if rollout_func else None,
            "log_history": trainer.state.log_history,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("saved the final policy to %s", final)
    return summary


if __name__ == "__main__":
    from rl.cli import main as cli

    sys.exit(cli(["grpo", *sys.argv[1:]]))

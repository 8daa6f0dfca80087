"""GRPO fine-tuning of a vision-language policy with pluggable rewards.

    brl grpo recipes/configs/tiny_cpu_hybrid.yaml [key=value ...]

Reads like a one-process program: load the policy and data, build the rewards, hand both to TRL's
GRPOTrainer, train, save. With `ray.enabled`, generation runs on rollout actors (weights synced
after optimizer steps) and the BaseReward scorer on its own actors; TRL stays the learner.
Reliability: `checkpoint.every_steps` writes atomic, resumable checkpoints (rl/checkpoint.py) and
`resume=auto` continues from the latest one, bit-exactly; a non-finite gradient skips its step
(rl/step_guard.py); rewards that fail are counted (reward/failures.py); a dead actor is restarted
and its work retried (rl/actor_calls.py). A run that has to stop (too many failures) writes a
checkpoint first.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import set_seed
from trl import GRPOConfig

from policies.chat import vision_token_ids
from policies.loading import load_policy, load_processor, resolve_dtype
from reward.failures import RewardFailureError
from reward.hybrid import HybridReward
from rl.checkpoint import CheckpointCallback, check_resume_has_work, resolve_resume, save_now
from rl.config import GRPORecipeConfig, load_config, to_container, to_yaml
from rl.data import load_rl_splits, rows_without_answer
from rl.errors import ActorFailureError
from rl.learner import build_grpo_trainer, check_update_precision, grpo_args, planned_steps
from rl.metrics import ScoreHistogramCallback
from rl.memory_plan import check_fits, format_plan, plan_for
from rl.placement import Placement, placed
from rl.rewards import build_reward_funcs, check_model_paths, rule_options
from rl.step_guard import NonFiniteGuard, NonFiniteStepError
from rl.tasks.shapes import resolve_policy_path
from rl.weight_sync import check_transport

log = logging.getLogger("brl.grpo")


def load(path: str | None = None, overrides: Sequence[str] = ()) -> GRPORecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of TRL's GRPOConfig."""
    return load_config(GRPORecipeConfig, path, overrides, passthrough={"trainer": GRPOConfig})


def spawn_actors(cfg: GRPORecipeConfig, policy_path: str, stack: contextlib.ExitStack):
    """Rollout pool + reward proxies on Ray actors, killed when `stack` closes.

    Returns (rollout_func, scorer, rule); scorer/rule are None where they stay in this process."""
    from reward.rule import RuleMatcher
    from reward.scorer import BaseRewardScorer
    from rl.actors import kill_on_exit, spawn_group
    from rl.config import ActorGroupConfig
    from rl.remote_reward import RemoteReward
    from rl.rollout import ActorRollouts
    from rl.rollout_pool import RolloutPool, engine_spec

    engine_cls, kwargs = engine_spec(cfg.rollout, cfg.policy, policy_path)
    rollout_actors = kill_on_exit(stack, spawn_group("rollout", engine_cls, kwargs, cfg.rollout.actors))
    pool = RolloutPool(rollout_actors, cfg.rollout.timeout_s, cfg.rollout.actors.max_retries,
                       cfg.rollout.weight_sync, cfg.rollout.weight_transfer, cfg.rollout.bucket_mb)
    stack.callback(pool.close)
    engine_dtype = resolve_dtype(cfg.rollout.dtype) if cfg.rollout.dtype not in (None, "auto") else None
    rollout_func = ActorRollouts(pool, sync_every=cfg.rollout.sync_every, max_staleness=cfg.rollout.max_staleness,
                                 logprob_gap_samples=cfg.rollout.logprob_gap_samples, overlap=cfg.rollout.overlap,
                                 dtype=engine_dtype)
    stack.callback(rollout_func.close)
    scorer = rule = None
    model_actors = cfg.reward.model.actors
    if cfg.reward.scheme in ("model", "hybrid") and model_actors.num_actors > 0:
        actors = kill_on_exit(stack, spawn_group("scorer", BaseRewardScorer, {"options": cfg.reward.model},
                                                 model_actors))
        scorer = RemoteReward(actors, "basereward", cfg.reward.timeout_s, model_actors.max_retries)
    if cfg.reward.rule.in_actor:
        group = ActorGroupConfig(num_actors=1, num_cpus=0.5)
        actors = kill_on_exit(stack, spawn_group("rule", RuleMatcher, rule_options(cfg.reward), group))
        rule = RemoteReward(actors, "rule", cfg.reward.timeout_s, group.max_retries)
    return rollout_func, scorer, rule


def report_rows_without_answer(train: Any, scheme: str) -> int:
    """How many training rows have no ground truth, said before training when the reward needs one."""
    missing = rows_without_answer(train)
    if missing and scheme in ("rule", "hybrid"):
        log.warning("%d of %d training rows have no answer: the %s reward %s", missing, len(train), scheme,
                    "cannot score them (None, counted as unscored)" if scheme == "rule" else
                    "scores them by the reward model alone")
    return missing


def check_memory(cfg: GRPORecipeConfig, args: GRPOConfig, placement: Placement) -> None:
    """`brl plan`'s estimate for the GPUs this run got; a GPU that would overflow stops the run here,
    naming its largest item and the setting that shrinks it."""
    import torch

    gpus = int(placement.cluster_gpus) if cfg.ray.enabled else len(placement.learner_gpu_ids)
    plans, header = plan_for(cfg, args, gpus, torch.cuda.get_device_properties(0).total_memory)
    log.info("memory plan:\n%s", format_plan(plans, header))
    check_fits(plans)


def main(cfg: GRPORecipeConfig, callbacks: list | None = None) -> dict:
    """Train; returns a summary dict (final metrics, where things were written)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    trainer_kwargs = dict(cfg.trainer)
    if cfg.checkpoint.every_steps > 0:
        trainer_kwargs.update(save_strategy="steps", save_steps=cfg.checkpoint.every_steps)
    # What cannot work is refused before anything starts or loads.
    resume_from = resolve_resume(cfg.resume, out)
    check_model_paths(cfg.reward)
    check_transport(cfg.rollout.weight_sync, cfg.rollout.weight_transfer, cfg.rollout.backend)
    check_update_precision(cfg.policy, trainer_kwargs, "policy")
    train, _ = load_rl_splits(cfg.data)
    report_rows_without_answer(train, cfg.reward.scheme)
    policy_path = resolve_policy_path(cfg.policy.path, out, cfg.seed)

    with contextlib.ExitStack() as stack:
        # GPUs checked, Ray started or joined, this process pinned to the learner's GPU: before anything
        # here touches CUDA (GRPOConfig asks it about bf16).
        placement = stack.enter_context(placed(cfg))
        args = grpo_args(str(out), cfg.seed, trainer_kwargs)
        if placement.learner_gpu_ids:  # a GPU run: refuse one that cannot fit before any model loads
            check_memory(cfg, args, placement)
        rollout_func = scorer = rule = None
        if cfg.ray.enabled:
            rollout_func, scorer, rule = spawn_actors(cfg, policy_path, stack)
        reward_funcs, reward_weights = build_reward_funcs(cfg.reward, scorer=scorer, rule=rule)
        args.reward_weights = args.reward_weights or reward_weights

        processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
        if not rollout_func:  # TRL generates in this process: keep vision placeholders out of completions
            args.generation_kwargs = {"suppress_tokens": vision_token_ids(processor), **(args.generation_kwargs or {})}
        model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)

        guard = NonFiniteGuard(cfg.max_skipped_steps)

        def checkpoint_state(state) -> dict:  # what a checkpoint records beyond the Trainer's own state
            return {
                "config": to_container(cfg),
                "policy_path": policy_path,
                "reward": {"scheme": cfg.reward.scheme, "model_paths": list(cfg.reward.model.paths),
                           "text_path": cfg.reward.model.text_path},
                "global_step": state.global_step,
                "consumed_prompts": state.global_step * prompts_per_step,
                "rollout_version": rollout_func.pool.version if rollout_func else None,
                "skipped_steps": list(guard.skipped_steps),
                "reward_failures": {f.__name__: f.stats.failed for f in reward_funcs},
            }

        checkpoints = CheckpointCallback(out, cfg.checkpoint.keep_last, checkpoint_state)
        callbacks = [*(callbacks or []), guard, checkpoints]
        hybrid = next((f.fn for f in reward_funcs if isinstance(f.fn, HybridReward)), None)
        if hybrid is not None and "tensorboard" in (args.report_to or []):
            callbacks.append(ScoreHistogramCallback(hybrid, out / "runs" / "reward_scores"))
        trainer = build_grpo_trainer(args, model, processor, train, reward_funcs, rollout_func=rollout_func,
                                     callbacks=callbacks, lora=cfg.policy.lora)
        trainer.rollout_logprobs_as_old = bool(rollout_func) and cfg.rollout.correct_off_policy and (
            cfg.rollout.overlap or cfg.rollout.sync_every > 1)
        prompts_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size \
            // trainer.num_generations
        if resume_from is not None:
            check_resume_has_work(resume_from, planned_steps(trainer))
            log.info("resuming from %s", resume_from)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except (RewardFailureError, NonFiniteStepError, ActorFailureError) as e:
            saved = save_now(trainer, checkpoints)
            log.error("stopped: %s\nthe run as it was is checkpointed in %s; continue it with resume=auto "
                      "(or resume=%s) once the cause is fixed", e, saved, saved)
            raise
        final = out / "final"
        trainer.save_model(str(final))
        processor.save_pretrained(final)
        summary = {
            "final_policy": str(final),
            "global_step": trainer.state.global_step,
            "resumed_from": str(resume_from) if resume_from else None,
            "last_checkpoint": str(checkpoints.last) if checkpoints.last else None,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "reward_failures": {f.__name__: f.stats.failed for f in reward_funcs},
            "reward_samples": {f.__name__: f.stats.samples for f in reward_funcs},
            "skipped_steps": guard.skipped_steps,
            "rollout_version": rollout_func.pool.version if rollout_func else None,
            "actor_restarts": rollout_func.pool.restarts if rollout_func else None,
            "learner_gpus": placement.learner_gpu_ids,
            "log_history": trainer.state.log_history,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("saved the final policy to %s", final)
    return summary


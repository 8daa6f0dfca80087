"""GRPO fine-tuning of a vision-language policy with pluggable rewards.

    brl grpo recipes/configs/tiny_cpu_hybrid.yaml [key=value ...]

Reads like a one-process program: load the policy and data, build the rewards, hand both to TRL's
GRPOTrainer, train, save. With `ray.enabled`, generation runs on rollout actors (weights synced
after optimizer steps; `rollout.colocate`: on the learner's own model instead) and the BaseReward
scorer on its own actors; TRL stays the learner. `learner.num_workers: N > 1` runs the same `train`
on N Ray Train workers (DDP, FSDP2 or ZeRO-3: rl/distributed.py), with the actors this process started.
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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import set_seed
from trl import GRPOConfig

from policies.chat import vision_token_ids
from policies.loading import load_policy, load_processor, resolve_dtype
from reward.failures import RewardFailureError
from reward.hybrid import HybridReward
from reward.rule import RuleMatcher
from rl.checkpoint import CheckpointCallback, check_resume_has_work, latest_checkpoint, resolve_resume, save_now
from rl.colocated import ColocatedPool, check_colocate
from rl.config import (SHARDED_STRATEGIES, ActorGroupConfig, ConfigError, GRPORecipeConfig, load_config, to_container,
                       to_yaml)
from rl.data import load_rl_splits, rows_without_answer
from rl.distributed import GatheredRollouts, decoder_layer_classes, run_workers, strategy_args
from rl.errors import ActorFailureError, LearnerWorkerError
from rl.learner import build_grpo_trainer, check_update_precision, grpo_args, planned_steps
from rl.memory_plan import check_fits, format_plan, plan_for
from rl.metrics import ScoreHistogramCallback
from rl.placement import Placement, learner_gpus, placed
from rl.rewards import build_reward_funcs, check_model_paths, rule_options
from rl.step_guard import NonFiniteGuard, NonFiniteStepError
from rl.tasks.shapes import resolve_policy_path
from rl.weight_sync import check_transport

log = logging.getLogger("brl.grpo")
RULE_ACTOR = ActorGroupConfig(num_actors=1, num_cpus=0.5)  # `reward.rule.in_actor`: one small actor


def load(path: str | None = None, overrides: Sequence[str] = ()) -> GRPORecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of TRL's GRPOConfig."""
    return load_config(GRPORecipeConfig, path, overrides, passthrough={"trainer": GRPOConfig})


@dataclass
class Actors:
    """The Ray actors a run's learner uses (handles: learner workers get them too)."""

    rollout: list | None = None
    scorer: list | None = None
    rule: list | None = None


def spawn_actors(cfg: GRPORecipeConfig, policy_path: str, stack: contextlib.ExitStack) -> Actors:
    """Rollout, scorer and rule actors as the config asks (killed when `stack` closes)."""
    from reward.scorer import BaseRewardScorer
    from rl.actors import kill_on_exit, spawn_group
    from rl.rollout_pool import engine_spec

    actors = Actors()
    if not cfg.rollout.colocate:
        engine_cls, kwargs = engine_spec(cfg.rollout, cfg.policy, policy_path)
        actors.rollout = kill_on_exit(stack, spawn_group("rollout", engine_cls, kwargs, cfg.rollout.actors))
    if cfg.reward.scheme in ("model", "hybrid") and cfg.reward.model.actors.num_actors > 0:
        actors.scorer = kill_on_exit(stack, spawn_group("scorer", BaseRewardScorer, {"options": cfg.reward.model},
                                                        cfg.reward.model.actors))
    if cfg.reward.rule.in_actor:
        actors.rule = kill_on_exit(stack, spawn_group("rule", RuleMatcher, rule_options(cfg.reward), RULE_ACTOR))
    return actors


def engine_dtype(cfg: GRPORecipeConfig) -> Any:
    """The rollout engines' weights dtype (None: the learner's)."""
    return resolve_dtype(cfg.rollout.dtype) if cfg.rollout.dtype not in (None, "auto") else None


def rollouts(cfg: GRPORecipeConfig, pool: Any, logprob_gap_samples: int) -> Any:
    """TRL's rollout_func over `pool` (rollout actors, or the colocated engine)."""
    from rl.rollout import ActorRollouts

    return ActorRollouts(pool, sync_every=cfg.rollout.sync_every, max_staleness=cfg.rollout.max_staleness,
                         logprob_gap_samples=logprob_gap_samples, overlap=cfg.rollout.overlap, dtype=engine_dtype(cfg))


def report_rows_without_answer(train: Any, scheme: str) -> int:
    """How many training rows have no ground truth, said before training when the reward needs one."""
    missing = rows_without_answer(train)
    if missing and scheme in ("rule", "hybrid"):
        log.warning("%d of %d training rows have no answer: the %s reward %s", missing, len(train), scheme,
                    "cannot score them (None, counted as unscored)" if scheme == "rule" else
                    "scores them by the reward model alone")
    return missing


def absolute_reward_model_paths(cfg: GRPORecipeConfig) -> None:
    """The reward models' local paths made absolute: the scorer actors open them where Ray started them
    (joining a running cluster: not where `brl grpo` was launched)."""
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if Path(path).exists() else path

    model = cfg.reward.model
    model.paths = [absolute(p) for p in model.paths]
    if model.text_path:
        model.text_path = absolute(model.text_path)


def check_learner(cfg: GRPORecipeConfig) -> None:
    """A multi-worker learner config that cannot work is refused before anything starts."""
    if cfg.learner.num_workers == 1:
        return
    if not cfg.ray.enabled:
        raise ConfigError("learner.num_workers > 1 runs the learner on Ray Train workers: set ray.enabled: true")
    if cfg.rollout.colocate:
        raise ConfigError("rollout.colocate generates on one learner's model: it needs learner.num_workers: 1 "
                          "(a multi-worker learner generates on rollout actors)")
    if cfg.trainer.get("deepspeed") and cfg.learner.strategy != "deepspeed":
        raise ConfigError(f"trainer.deepspeed is set and learner.strategy is {cfg.learner.strategy!r}: set "
                          "learner.strategy: deepspeed to train with that DeepSpeed config")


def check_memory(cfg: GRPORecipeConfig, args: GRPOConfig, placement: Placement) -> None:
    """`brl plan`'s estimate for the GPUs this run got; a GPU that would overflow stops the run here,
    naming its largest item and the setting that shrinks it."""
    import torch

    gpus = int(placement.cluster_gpus) if cfg.ray.enabled else len(placement.learner_gpu_ids)
    plans, header = plan_for(cfg, args, gpus, torch.cuda.get_device_properties(0).total_memory)
    log.info("memory plan:\n%s", format_plan(plans, header))
    check_fits(plans)


def cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def trainer_kwargs(cfg: GRPORecipeConfig) -> dict[str, Any]:
    kwargs = dict(cfg.trainer)
    if cfg.checkpoint.every_steps > 0:
        kwargs.update(save_strategy="steps", save_steps=cfg.checkpoint.every_steps)
    return kwargs


def main(cfg: GRPORecipeConfig, callbacks: list | None = None) -> dict:
    """Train; returns a summary dict (final metrics, where things were written)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    # What cannot work is refused before anything starts or loads.
    resume_from = resolve_resume(cfg.resume, out)
    check_model_paths(cfg.reward)
    absolute_reward_model_paths(cfg)
    check_transport(cfg.rollout.weight_sync, cfg.rollout.weight_transfer, cfg.rollout.backend)
    check_colocate(cfg.rollout, cfg.ray.enabled)
    check_learner(cfg)
    check_update_precision(cfg.policy, trainer_kwargs(cfg), "policy")
    policy_path = resolve_policy_path(cfg.policy.path, out, cfg.seed)
    dataset, _ = load_rl_splits(cfg.data)
    report_rows_without_answer(dataset, cfg.reward.scheme)

    with contextlib.ExitStack() as stack:
        # GPUs checked, Ray started or joined, this process pinned to the learner's GPU: before anything
        # here touches CUDA (GRPOConfig asks it about bf16).
        placement = stack.enter_context(placed(cfg))
        if (placement.learner_gpu_ids or (cfg.learner.num_workers > 1 and placement.cluster_gpus)) and cuda_here():
            # A GPU run: refuse one that cannot fit before any model loads. (Logical GPUs, ray.num_gpus on a
            # machine without CUDA, place as GPUs would; there is no GPU memory to check.)
            check_memory(cfg, grpo_args(str(out), cfg.seed, trainer_kwargs(cfg)), placement)
        actors = spawn_actors(cfg, policy_path, stack) if cfg.ray.enabled else Actors()
        if cfg.learner.num_workers == 1:
            return train(cfg, policy_path, actors, resume_from, callbacks, dataset, placement.learner_gpu_ids)
        config = {"cfg": cfg, "policy_path": policy_path, "actors": actors, "resume_from": resume_from,
                  "callbacks": callbacks, "launch_dir": os.getcwd()}
        gpus = learner_gpus(cfg, int(placement.cluster_gpus))
        # Logical GPUs (ray.num_gpus on a machine without CUDA) place workers as GPUs would; they talk gloo.
        backend = "nccl" if gpus > 0 and (cfg.ray.num_gpus is None or cuda_here()) else "gloo"
        try:
            run_workers(train_worker, config, cfg.learner, gpus, backend, out / "ray_train",
                        name=f"learner-{os.getpid()}")
        except (LearnerWorkerError, RewardFailureError, NonFiniteStepError, ActorFailureError) as e:
            last = latest_checkpoint(out)
            log.error("stopped: %s\nthe last checkpoint is %s; continue with resume=auto once the cause is fixed",
                      e, last or "(none: the run had not saved one yet)")
            raise
    return json.loads((out / "summary.json").read_text())


def train_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker of a multi-worker learner (one rank of its torch.distributed group)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = dict(config)
    # Ray Train starts workers in a directory of its own: relative paths in the config (policy.path,
    # output_dir, data files) mean what they meant where `brl grpo` was launched.
    launch_dir = config.pop("launch_dir")
    if Path(launch_dir).is_dir():
        os.chdir(launch_dir)
    else:  # another node without that directory: only absolute (shared) paths can work there
        log.warning("learner worker: the launch directory %s does not exist on this node; relative paths in the "
                    "config resolve against %s", launch_dir, os.getcwd())
    train(**config, learner_gpus=[d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d])


def train(cfg: GRPORecipeConfig, policy_path: str, actors: Actors, resume_from: Path | None,
          callbacks: list | None = None, dataset: Any = None, learner_gpus: list[str] | None = None) -> dict:
    """Build TRL's GRPOTrainer with this project's rollouts and rewards and train it: in this process
    (one learner), or as one rank of a multi-worker learner. Rank 0 writes the final policy's folder
    and `summary.json`, and returns the summary."""
    import torch.distributed as dist

    from rl.remote_reward import RemoteReward
    from rl.rollout_pool import RolloutPool

    out = Path(cfg.output_dir)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank0 = world == 1 or dist.get_rank() == 0
    sharded = world > 1 and cfg.learner.strategy in SHARDED_STRATEGIES
    set_seed(cfg.seed)
    if dataset is None:
        dataset, _ = load_rl_splits(cfg.data)
    with contextlib.ExitStack() as stack:
        pool = None
        if actors.rollout and rank0:  # rank 0 alone generates, for every rank
            pool = RolloutPool(actors.rollout, cfg.rollout.timeout_s, cfg.rollout.actors.max_retries,
                               cfg.rollout.weight_sync, cfg.rollout.weight_transfer, cfg.rollout.bucket_mb)
            stack.callback(pool.close)
        scorer = RemoteReward(actors.scorer, "basereward", cfg.reward.timeout_s,
                              cfg.reward.model.actors.max_retries) if actors.scorer else None
        rule = RemoteReward(actors.rule, "rule", cfg.reward.timeout_s, RULE_ACTOR.max_retries,
                            reads=RuleMatcher(**rule_options(cfg.reward)).reads) if actors.rule else None
        reward_funcs, reward_weights = build_reward_funcs(cfg.reward, scorer=scorer, rule=rule)

        processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
        model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)
        kwargs = trainer_kwargs(cfg)
        if world > 1:
            kwargs.update(strategy_args(cfg.learner.strategy, decoder_layer_classes(model), kwargs.get("deepspeed")))
        args = grpo_args(str(out), cfg.seed, kwargs)
        args.reward_weights = args.reward_weights or reward_weights
        if not cfg.ray.enabled:  # TRL generates in this process: keep vision placeholders out of completions
            args.generation_kwargs = {"suppress_tokens": vision_token_ids(processor), **(args.generation_kwargs or {})}
        if cfg.ray.enabled and cfg.rollout.colocate:
            pool = ColocatedPool(model, processor, engine_dtype(cfg))
        # A sharded learner's forward is collective: rank 0 alone cannot re-score rollouts for the gap metric
        # (GatheredRollouts measures it on every rank at once instead).
        gap_samples = 0 if sharded else cfg.rollout.logprob_gap_samples
        rollout_func = rollouts(cfg, pool, gap_samples) if pool is not None else None
        if world > 1 and cfg.ray.enabled:
            rollout_func = GatheredRollouts(rollout_func, cfg.rollout.sync_every, sharded, engine_dtype(cfg),
                                            cfg.rollout.logprob_gap_samples if sharded else 0)
        if rollout_func is not None:
            stack.callback(rollout_func.close)

        guard = NonFiniteGuard(cfg.max_skipped_steps)

        def checkpoint_state(state) -> dict:  # what a checkpoint records beyond the Trainer's own state
            return {
                "config": to_container(cfg),
                "policy_path": policy_path,
                "reward": {"scheme": cfg.reward.scheme, "model_paths": list(cfg.reward.model.paths),
                           "text_path": cfg.reward.model.text_path},
                "global_step": state.global_step,
                "consumed_prompts": state.global_step * prompts_per_step,
                "learner_workers": world,
                "rollout_version": rollout_func.pool.version if rollout_func else None,
                "skipped_steps": list(guard.skipped_steps),
                "reward_failures": {f.__name__: f.stats.failed for f in reward_funcs},
            }

        checkpoints = CheckpointCallback(out, cfg.checkpoint.keep_last, checkpoint_state)
        callbacks = [*(callbacks or []), guard, checkpoints]
        hybrid = next((f.fn for f in reward_funcs if isinstance(f.fn, HybridReward)), None)
        if hybrid is not None and "tensorboard" in (args.report_to or []) and rank0:
            callbacks.append(ScoreHistogramCallback(hybrid, out / "runs" / "reward_scores"))
        trainer = build_grpo_trainer(args, model, processor, dataset, reward_funcs, rollout_func=rollout_func,
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
            if world > 1:  # a checkpoint now would be collective, and the other ranks are elsewhere
                log.error("stopped: %s\nthe last checkpoint is %s; continue with resume=auto once the cause is "
                          "fixed", e, checkpoints.last or "(none yet)")
                raise
            saved = save_now(trainer, checkpoints)
            log.error("stopped: %s\nthe run as it was is checkpointed in %s; continue it with resume=auto "
                      "(or resume=%s) once the cause is fixed", e, saved, saved)
            raise
        final = out / "final"
        trainer.save_model(str(final))  # collective under FSDP / ZeRO-3: every rank takes part, rank 0 writes
        gpus = learner_gpus or []
        if world > 1:
            every: list[Any] = [None] * world
            dist.all_gather_object(every, gpus)
            gpus = [g for part in every for g in part]
        if not rank0:
            return {}
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
            "learner_workers": world,
            "learner_gpus": gpus,
            "log_history": trainer.state.log_history,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("saved the final policy to %s", final)
    return summary

"""GRPO fine-tuning of a vision-language policy with pluggable rewards.

    brl grpo recipes/configs/tiny_cpu_hybrid.yaml [key=value ...]

Reads like a one-process program: load the policy and data, take the rollout and reward functions from
the pipeline, hand them to TRL's GRPOTrainer, train, save. Where things run is the pipeline's business
(pipeline/__init__.py): in this process, on Ray actors (generation, reward models), on the learner's own
model (`rollout.colocate`), or with the learner itself on N Ray Train workers (`learner.num_workers`).
Reliability: `checkpoint.every_steps` writes atomic, resumable checkpoints (rl/checkpoint.py) and
`resume=auto` continues from the latest one, bit-exactly; a non-finite gradient skips its step
(rl/step_guard.py); rewards that fail are counted (reward/failures.py); a dead actor is restarted and its
work retried (pipeline/actor_calls.py). A run that has to stop writes a checkpoint first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import set_seed
from trl import GRPOConfig

import pipeline
from policies.loading import load_policy, load_processor
from reward.failures import RewardFailureError
from rl.checkpoint import CheckpointCallback, check_resume_has_work, latest_checkpoint, resolve_resume, save_now
from rl.config import ConfigError, GRPORecipeConfig, load_config, to_container, to_yaml
from rl.data import load_rl_splits, rows_without_answer
from rl.errors import ActorFailureError, LearnerWorkerError
from rl.learner import build_grpo_trainer, check_update_precision, grpo_args, planned_steps
from rl.metrics import score_histograms
from rl.models import resolve_model_path
from rl.rewards import resolve_reward_models
from rl.step_guard import NonFiniteGuard, NonFiniteStepError

log = logging.getLogger("brl.grpo")
STOPS = (RewardFailureError, NonFiniteStepError, ActorFailureError)  # errors a run stops on, checkpointed


def load(path: str | None = None, overrides: Sequence[str] = ()) -> GRPORecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of TRL's GRPOConfig."""
    return load_config(GRPORecipeConfig, path, overrides, passthrough={"trainer": GRPOConfig})


def main(cfg: GRPORecipeConfig, callbacks: list | None = None) -> dict:
    """Train; returns a summary dict (final metrics, where things were written)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    check(cfg)
    resume_from = resolve_resume(cfg.resume, out)
    policy_path = resolve_model_path(cfg.policy.path, out, cfg.seed)
    dataset, _ = load_rl_splits(cfg.data)
    report_rows_without_answer(dataset, cfg.reward)
    with pipeline.launch(cfg, policy_path) as launched:
        try:
            dataset = dataset if launched.layout.learner_workers == 1 else None  # N workers: each loads its own
            summary = launched.run(
                train, cfg=cfg, policy_path=policy_path, resume_from=resume_from, callbacks=callbacks, dataset=dataset
            )
        except (LearnerWorkerError, *STOPS) as e:
            log.error(
                "stopped: %s\nthe last checkpoint is %s; continue with resume=auto once the cause is fixed",
                e,
                latest_checkpoint(out) or "(none: the run had not saved one yet)",
            )
            raise
    return summary or json.loads((out / "summary.json").read_text())


def check(cfg: GRPORecipeConfig) -> None:
    """Every check of a loaded config that can refuse it (a ConfigError), in one pass, before Ray starts or a
    model or data loads: the sections' own checks ran when the config was loaded; these need the whole of
    it (the pipeline's layout and placement on this machine, the reward models' files, the precision)."""
    try:
        resolve_reward_models(cfg.reward)
        pipeline.check(cfg)
        check_update_precision(cfg.policy, trainer_kwargs(cfg), "policy")
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # the components' own checks, said as what they are
        raise ConfigError(str(e)) from None


def train(
    cfg: GRPORecipeConfig,
    policy_path: str,
    actors: pipeline.Actors,
    resume_from: Path | None,
    callbacks: list | None = None,
    dataset: Any = None,
    learner_gpus: list[str] | None = None,
) -> dict:
    """One learner process (the driver, or one rank of a multi-worker learner): TRL's GRPOTrainer with the
    pipeline's rollouts and rewards. Rank 0 writes the final policy and `summary.json`, and returns the summary."""
    import torch.distributed as dist

    out, world = Path(cfg.output_dir), dist.get_world_size() if dist.is_initialized() else 1
    rank0 = world == 1 or dist.get_rank() == 0
    set_seed(cfg.seed)
    dataset = dataset if dataset is not None else load_rl_splits(cfg.data)[0]
    processor = load_processor(policy_path, cfg.policy.max_pixels, cfg.policy.trust_remote_code)
    model = load_policy(policy_path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.freeze_vision)
    with pipeline.build(cfg, actors, model, processor, learner_gpus) as parts:
        args = grpo_args(str(out), cfg.seed, {**trainer_kwargs(cfg), **parts.trainer_settings})
        args.reward_weights = args.reward_weights or parts.reward_weights
        guard = NonFiniteGuard(cfg.max_skipped_steps)
        checkpoints = CheckpointCallback(
            out,
            cfg.checkpoint.keep_last,
            lambda state: {
                "config": to_container(cfg),
                "policy_path": policy_path,
                "global_step": state.global_step,
                "consumed_prompts": state.global_step * prompts_per_step,
                "learner_workers": world,
                **run_state(cfg, parts, guard),
            },
        )
        trainer = build_grpo_trainer(
            args,
            model,
            processor,
            dataset,
            parts.reward_funcs,
            rollout_func=parts.rollout_func,
            lora=cfg.policy.lora,
            callbacks=[*(callbacks or []), guard, checkpoints, *score_histograms(parts.reward_funcs, args, out, rank0)],
            rollout_logprobs_as_old=parts.rollout_logprobs_as_old,
            min_group_std=cfg.reward.flat_group_std(),
            vision_lr=cfg.policy.vision_lr,
        )
        prompts_per_step = (
            args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size
            // trainer.num_generations
        )
        if resume_from is not None:
            check_resume_has_work(resume_from, planned_steps(trainer))
            log.info("resuming from %s", resume_from)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except STOPS as e:
            if world == 1:  # with N workers a checkpoint now would be collective, and the other ranks are elsewhere
                saved = save_now(trainer, checkpoints)
                log.error("stopped: %s\nthe run as it was is checkpointed in %s", e, saved)
            raise
        final = out / "final"
        trainer.save_model(str(final))  # collective under FSDP / ZeRO-3: every rank takes part, rank 0 writes
        gpus = gathered(learner_gpus or [], world)
        if not rank0:
            return {}
        processor.save_pretrained(final)
        summary = {
            "final_policy": str(final),
            "global_step": trainer.state.global_step,
            "resumed_from": str(resume_from) if resume_from else None,
            "last_checkpoint": str(checkpoints.last) if checkpoints.last else None,
            "train_runtime_s": result.metrics.get("train_runtime"),
            **run_state(cfg, parts, guard),
            "reward_samples": {f.__name__: f.stats.samples for f in parts.reward_funcs},
            "actor_restarts": parts.actor_restarts,
            "learner_workers": world,
            "learner_gpus": gpus,
            "log_history": trainer.state.log_history,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("saved the final policy to %s", final)
    return summary


def run_state(cfg: GRPORecipeConfig, parts: pipeline.Built, guard: NonFiniteGuard) -> dict[str, Any]:
    """What a checkpoint and the summary record of the run besides the Trainer's own state."""
    return {
        "reward": {
            "scheme": cfg.reward.scheme,
            "model_paths": list(cfg.reward.model.paths),
            "text_path": cfg.reward.model.text_path,
        },
        "rollout_version": parts.rollout_version,
        "skipped_steps": list(guard.skipped_steps),
        "reward_failures": {f.__name__: f.stats.failed for f in parts.reward_funcs},
    }


def trainer_kwargs(cfg: GRPORecipeConfig) -> dict[str, Any]:
    """The `trainer:` section, with the checkpoint schedule of the `checkpoint:` section."""
    kwargs = dict(cfg.trainer)
    if cfg.checkpoint.every_steps > 0:
        kwargs.update(save_strategy="steps", save_steps=cfg.checkpoint.every_steps)
    return kwargs


def gathered(items: list[Any], world: int) -> list[Any]:
    """Every rank's `items`, concatenated in rank order (each rank's GPU ids, for the summary)."""
    if world == 1:
        return items
    import torch.distributed as dist

    every: list[Any] = [None] * world
    dist.all_gather_object(every, items)
    return [item for part in every for item in part]


def report_rows_without_answer(train: Any, reward: Any) -> int:
    """How many training rows have no ground truth, said before training when the reward needs one."""
    missing = rows_without_answer(train)
    if missing and "rule" in reward.components():
        log.warning(
            "%d of %d training rows have no answer: the %s reward %s",
            missing,
            len(train),
            reward.scheme,
            "cannot score them (None, counted as unscored)"
            if reward.scheme == "rule"
            else "scores them by its model branch alone",
        )
    return missing

"""The Ray pipeline around TRL's GRPOTrainer: where a run's parts go, and what the learner gets from them.

One run has two sides, and this package has one function for each:

- `launch(cfg, policy_path)`, in the driver (`brl grpo`): checks the GPUs, CPUs and labels the config asks
  for, starts or joins Ray, pins this process to the learner's GPU, refuses a config that cannot fit in
  GPU memory, spawns the rollout and reward actors; `Launched.run(train, ...)` then trains in this
  process or on N Ray Train workers.
- `build(cfg, actors, model, processor, learner_gpus)`, in each learner process: the rollout function
  and reward functions TRL's GRPOTrainer takes, over those actors (or in process), and the trainer
  settings the mode needs; closing it lets go of what it holds.

The mode (in process, Ray actors, colocated engine, N learner workers) is decided once, from the config,
by `Layout.of` (pipeline/layout.py); nothing else asks the config which mode it is in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.layout import ACTOR_NAMES, Layout
from rl.config import ConfigError, GRPORecipeConfig

log = logging.getLogger(__name__)


@dataclass
class Actors:
    """The Ray actors of a run, by group (handles: learner workers get them too)."""

    rollout: list | None = None
    rewards: dict[str, list] = field(default_factory=dict)  # reward component -> its actors


def check(cfg: GRPORecipeConfig) -> None:
    """What the pipeline cannot run is refused here, before anything starts or loads."""
    from pipeline.colocated import check_colocate
    from pipeline.placement import check_local_resources

    check_colocate(cfg.rollout, cfg.ray.enabled)
    if cfg.rollout.backend == "vllm" or (cfg.reward.judge.backend == "vllm" and "judge" in cfg.reward.components()):
        from adapters.vllm import vllm_version_problem

        if problem := vllm_version_problem():
            raise ConfigError(f"rollout.backend / reward.judge.backend: {problem}")
    if cfg.learner.num_workers > 1:
        _check_learner_workers(cfg)
    check_local_resources(cfg)  # last: the config's own contradictions are named before what this machine lacks


def _check_learner_workers(cfg: GRPORecipeConfig) -> None:
    if not cfg.ray.enabled:
        raise ConfigError("learner.num_workers > 1 runs the learner on Ray Train workers: set ray.enabled: true")
    if cfg.rollout.colocate:
        raise ConfigError(
            "rollout.colocate generates on one learner's model: it needs learner.num_workers: 1 "
            "(a multi-worker learner generates on rollout actors)"
        )
    if cfg.trainer.get("deepspeed") and cfg.learner.strategy != "deepspeed":
        raise ConfigError(
            f"trainer.deepspeed is set and learner.strategy is {cfg.learner.strategy!r}: set "
            "learner.strategy: deepspeed to train with that DeepSpeed config"
        )


@dataclass
class Launched:
    """A launched run: its layout, where the learner was placed, and its actors."""

    cfg: GRPORecipeConfig
    layout: Layout
    learner_gpu_ids: list[str]
    cluster_gpus: float
    actors: Actors

    def run(self, train: Callable[..., dict], **kwargs: Any) -> dict | None:
        """`train(actors=..., learner_gpus=..., **kwargs)`: in this process (returns what it returns), or
        on the learner's N Ray Train workers (each rank runs it; returns None)."""
        if self.layout.learner_workers == 1:
            return train(actors=self.actors, learner_gpus=self.learner_gpu_ids, **kwargs)
        from pipeline.distributed import run_workers
        from pipeline.placement import learner_gpus

        cfg = self.cfg
        gpus = learner_gpus(cfg, int(self.cluster_gpus))
        # Logical GPUs (ray.num_gpus on a machine without CUDA) place workers as GPUs would; they talk gloo.
        backend = "nccl" if gpus > 0 and (cfg.ray.num_gpus is None or _cuda()) else "gloo"
        run_workers(
            train,
            {"actors": self.actors, **kwargs},
            cfg.learner,
            gpus,
            backend,
            Path(cfg.output_dir) / "ray_train",
            name=f"learner-{_pid()}",
        )
        return None


@contextlib.contextmanager
def launch(cfg: GRPORecipeConfig, policy_path: str) -> Iterator[Launched]:
    """The driver's side of a run (see the module docstring); actors are stopped and Ray is shut down
    (if this started it) on exit."""
    from pipeline.placement import placed

    layout = Layout.of(cfg)
    with contextlib.ExitStack() as stack:
        # GPUs checked, Ray started or joined, this process pinned to the learner's GPU: before anything
        # here touches CUDA (GRPOConfig asks it about bf16).
        placement = stack.enter_context(placed(cfg))
        if (placement.learner_gpu_ids or (layout.learner_workers > 1 and placement.cluster_gpus)) and _cuda():
            # A GPU run: refuse one that cannot fit before any model loads. (Logical GPUs, ray.num_gpus on a
            # machine without CUDA, place as GPUs would; there is no GPU memory to check.)
            _check_memory(cfg, int(placement.cluster_gpus) if layout.ray else len(placement.learner_gpu_ids))
        actors = _spawn(cfg, layout, policy_path, stack) if layout.ray else Actors()
        yield Launched(cfg, layout, placement.learner_gpu_ids, placement.cluster_gpus, actors)


def _spawn(cfg: GRPORecipeConfig, layout: Layout, policy_path: str, stack: contextlib.ExitStack) -> Actors:
    """The rollout and reward actors the layout asks for (stopped when `stack` closes), started together:
    the groups construct at once (engines start while reward models load), and are waited for together."""
    from pipeline.actors import await_ready, start_group, stopped_on_exit
    from pipeline.rollout_pool import engine_spec, start_rollout_actors
    from rl.rewards import component_spec

    # Each group is registered for stopping as soon as it is created: also when a later group cannot start.
    rollout = None
    if layout.rollout_actors:
        engine_cls, kwargs = engine_spec(cfg.rollout, cfg.policy, policy_path)
        rollout = stopped_on_exit(stack, start_rollout_actors(engine_cls, kwargs, cfg.rollout.actors))
    rewards = {}
    for name in layout.reward_actors:
        spec = component_spec(name, cfg.reward)
        rewards[name] = stopped_on_exit(
            stack, start_group(ACTOR_NAMES.get(name, name), spec.cls, spec.kwargs, getattr(cfg.reward.actors, name))
        )
    await_ready([group for group in (rollout, *rewards.values()) if group is not None])
    return Actors(
        rollout=rollout.actors if rollout else None, rewards={name: group.actors for name, group in rewards.items()}
    )


def _check_memory(cfg: GRPORecipeConfig, gpus: int) -> None:
    """`brl plan`'s estimate for the GPUs this run got; a GPU that would overflow stops the run here,
    naming its largest item and the setting that shrinks it."""
    import torch

    from pipeline.memory_plan import check_fits, format_plan, plan_for
    from rl.learner import grpo_args

    args = grpo_args(cfg.output_dir, cfg.seed, dict(cfg.trainer))
    plans, header = plan_for(cfg, args, gpus, torch.cuda.get_device_properties(0).total_memory)
    log.info("memory plan:\n%s", format_plan(plans, header))
    check_fits(plans)


@dataclass
class Built:
    """What one learner process gets from the pipeline."""

    reward_funcs: list  # GuardedReward, TRL's reward_funcs
    reward_weights: list[float]
    rollout_func: Any = None  # TRL's rollout_func (None: TRL generates in process)
    trainer_settings: dict[str, Any] = field(default_factory=dict)  # GRPOConfig fields the mode needs
    rollout_logprobs_as_old: bool = False  # the engines' logprobs are the PPO "old" policy (stale rollouts)

    @property
    def rollout_version(self) -> int | None:
        """The policy version the rollout engines hold (None without a rollout pool on this rank)."""
        pool = getattr(self.rollout_func, "pool", None)
        return pool.version if pool is not None else None

    @property
    def actor_restarts(self) -> int | None:
        pool = getattr(self.rollout_func, "pool", None)
        return pool.restarts if pool is not None else None


@contextlib.contextmanager
def build(
    cfg: GRPORecipeConfig, actors: Actors, model: Any, processor: Any, learner_gpus: list[str] | None = None
) -> Iterator[Built]:
    """The learner's side of a run, in this process (the driver, or one rank of a multi-worker learner):
    see the module docstring. `model`/`processor`: the policy being trained; `learner_gpus`: the GPU ids
    this process was given."""
    import torch.distributed as dist

    from pipeline.remote_reward import RemoteReward
    from pipeline.weight_sync import learner_location
    from rl.rewards import build_rewards, component_spec

    layout = Layout.of(cfg)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank0 = world == 1 or dist.get_rank() == 0
    with contextlib.ExitStack() as stack:
        specs = {name: component_spec(name, cfg.reward) for name in actors.rewards}
        hosted = {
            name: RemoteReward(
                handles,
                name,
                cfg.reward.timeout_s,
                getattr(cfg.reward.actors, name).max_retries,
                reads=specs[name].reads,
                counts_costs=hasattr(specs[name].cls, "metrics"),
                calibrates=hasattr(specs[name].cls, "adopt_calibration"),
            )
            for name, handles in actors.rewards.items()
        }
        reward_funcs, reward_weights = build_rewards(cfg.reward, hosted)
        pool = None
        if layout.colocate:
            from pipeline.colocated import ColocatedPool

            pool = ColocatedPool(model, processor, _engine_dtype(cfg))
        elif actors.rollout and rank0:  # rank 0 alone generates, for every rank
            from pipeline.rollout_pool import RolloutPool

            pool = RolloutPool(actors.rollout, cfg.rollout, learner_location(learner_gpus or []))
            stack.callback(pool.close)
        rollout_func = _rollout_func(cfg, layout, pool, world)
        if rollout_func is not None:
            stack.callback(rollout_func.close)
        yield Built(
            reward_funcs,
            reward_weights,
            rollout_func,
            _trainer_settings(cfg, layout, model, processor, world),
            rollout_logprobs_as_old=bool(rollout_func)
            and cfg.rollout.correct_off_policy
            and (cfg.rollout.overlap or cfg.rollout.sync_every > 1),
        )


def _rollout_func(cfg: GRPORecipeConfig, layout: Layout, pool: Any, world: int) -> Any:
    """TRL's rollout_func over `pool` (this rank's), gathered across the ranks of a multi-worker learner."""
    from pipeline.rollout import ActorRollouts

    r = cfg.rollout
    # A sharded learner's forward is collective: rank 0 alone cannot re-score rollouts for the logprob gap
    # (GatheredRollouts measures it on every rank at once instead).
    func = (
        ActorRollouts(
            pool,
            sync_every=r.sync_every,
            max_staleness=r.max_staleness,
            logprob_gap_samples=0 if layout.sharded else r.logprob_gap_samples,
            overlap=r.overlap,
            dtype=_engine_dtype(cfg),
        )
        if pool is not None
        else None
    )
    if world > 1 and layout.ray:
        from pipeline.distributed import GatheredRollouts

        func = GatheredRollouts(
            func, r.sync_every, layout.sharded, _engine_dtype(cfg), r.logprob_gap_samples if layout.sharded else 0
        )
    return func


def _trainer_settings(cfg: GRPORecipeConfig, layout: Layout, model: Any, processor: Any, world: int) -> dict:
    """GRPOConfig fields the layout needs: the distributed strategy's, and (TRL generating in process) the
    vision placeholder tokens kept out of completions."""
    from policies.chat import vision_token_ids

    settings: dict[str, Any] = {}
    if world > 1:
        from pipeline.distributed import decoder_layer_classes, strategy_args

        settings.update(strategy_args(cfg.learner.strategy, decoder_layer_classes(model), cfg.trainer.get("deepspeed")))
    if not layout.ray:
        settings["generation_kwargs"] = {
            "suppress_tokens": vision_token_ids(processor),
            **(cfg.trainer.get("generation_kwargs") or {}),
        }
    return settings


def _engine_dtype(cfg: GRPORecipeConfig) -> Any:
    """The rollout engines' weights dtype (None: the learner's)."""
    from policies.loading import resolve_dtype

    return resolve_dtype(cfg.rollout.dtype) if cfg.rollout.dtype not in (None, "auto") else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _pid() -> int:
    import os

    return os.getpid()

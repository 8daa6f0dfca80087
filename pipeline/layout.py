"""Where each part of a GRPO run goes, decided once from the config: the only place that reads which mode
(in process, Ray actors, colocated engine, N learner workers) a config asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.config import SHARDED_STRATEGIES

# How logs and errors name a reward component's actors where its key alone is unclear ("model": which?).
ACTOR_NAMES = {"model": "reward model"}


@dataclass(frozen=True)
class Layout:
    """Where each part of a GRPO run goes."""

    ray: bool  # actors and Ray Train workers; False: everything in this process, TRL generates itself
    learner_workers: int  # 1: the learner trains in the driver; N: on N Ray Train workers
    sharded: bool  # the learner's weights are split across its workers (FSDP2, ZeRO-3)
    colocate: bool  # generation on the learner's own model (no rollout actors)
    rollout_actors: bool  # generation on rollout actors
    reward_actors: tuple[str, ...]  # reward components hosted on their own actors (the rest: in the learner)

    @classmethod
    def of(cls, cfg: Any) -> Layout:
        """`cfg`: a GRPORecipeConfig."""
        ray, workers = cfg.ray.enabled, cfg.learner.num_workers
        return cls(
            ray=ray,
            learner_workers=workers,
            sharded=workers > 1 and cfg.learner.strategy in SHARDED_STRATEGIES,
            colocate=ray and cfg.rollout.colocate,
            rollout_actors=ray and not cfg.rollout.colocate,
            reward_actors=tuple(reward_actor_groups(cfg)),
        )

    def in_learner(self, component: str, cfg: Any) -> bool:
        """Whether reward component `component` of the scheme runs in the learner's process."""
        return component in cfg.reward.components() and component not in self.reward_actors


def reward_actor_groups(cfg: Any) -> dict[str, Any]:
    """component -> ActorGroupConfig of each reward component of the scheme that runs on Ray actors."""
    if not cfg.ray.enabled:
        return {}
    groups = {name: getattr(cfg.reward.actors, name) for name in cfg.reward.components()}
    return {name: group for name, group in groups.items() if group.num_actors > 0}


def actor_groups(cfg: Any) -> list[tuple[str, Any]]:
    """(name, ActorGroupConfig) of every Ray actor group the config starts: the rollout actors (unless
    colocated) and each reward component of the scheme that runs on actors."""
    layout = Layout.of(cfg)
    rollout = [("rollout", cfg.rollout.actors)] if layout.rollout_actors else []
    return rollout + [(ACTOR_NAMES.get(name, name), group) for name, group in reward_actor_groups(cfg).items()]

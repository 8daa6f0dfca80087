"""Spawning Ray actors: resources, placement groups, restarts (the cluster itself: rl/placement.py).

Ray hosts plain classes (a rollout engine, a reward scorer, a rule matcher), wrapped at spawn time
only, so the same classes run in-process in tests and notebooks, and every call through an actor
is one of the class's own methods: `actor.generate.remote(requests, sampling)`. Calling groups of
actors (fan-out, timeouts, restarts, retries) is `rl/actor_calls.py`.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _hosted(cls: type[T], num_threads: int) -> type[T]:
    """`cls` as an actor runs it: its own methods, with torch's thread count set before its
    constructor (one actor per core on small machines: no oversubscription). A fresh subclass, so
    the plain class stays undecorated."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        import torch

        torch.set_num_threads(num_threads)
        cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__doc__": cls.__doc__})


def spawn_group(name: str, cls: type[T], kwargs: dict[str, Any], group: Any) -> list[Any]:
    """`group.num_actors` actors of `cls(**kwargs)` with the group's resources and placement.

    `group` is an `rl.config.ActorGroupConfig`: num_actors, num_cpus, num_gpus, resources (custom
    resource labels that pin actors to nodes), placement (a placement-group strategy or None),
    max_restarts. Returns Ray actor handles whose methods are `cls`'s.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if group.num_actors < 1:
        raise ValueError(f"{name}: num_actors must be >= 1, got {group.num_actors}")
    bundle = {"CPU": group.num_cpus, **({"GPU": group.num_gpus} if group.num_gpus else {}), **group.resources}
    strategy = None
    if group.placement:
        if group.placement not in PLACEMENT_STRATEGIES:
            raise ValueError(f"{name}: placement must be one of {PLACEMENT_STRATEGIES}, got {group.placement!r}")
        pg = placement_group([dict(bundle) for _ in range(group.num_actors)], strategy=group.placement)
        ray.get(pg.ready(), timeout=group.ready_timeout_s)
        strategy = pg
    actor_cls = ray.remote(_hosted(cls, max(1, int(group.num_cpus))))
    actors = []
    for i in range(group.num_actors):
        options: dict[str, Any] = dict(
            num_cpus=group.num_cpus, num_gpus=group.num_gpus, resources=dict(group.resources) or None,
            max_restarts=group.max_restarts, name=None,
        )
        if strategy is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=strategy, placement_group_bundle_index=i)
        actors.append(actor_cls.options(**options).remote(**kwargs))
    # Fail fast (and clearly) if an actor cannot be constructed or placed.
    ray.get([actor_pid(a) for a in actors], timeout=group.ready_timeout_s)
    log.info("%s: %d actor(s) ready (%s CPU, %s GPU each%s)", name, len(actors), group.num_cpus, group.num_gpus,
             f", {group.placement}" if group.placement else "")
    return actors


def _pid(_obj: Any) -> int:
    return os.getpid()


def _node_id(_obj: Any) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def actor_pid(actor: Any) -> Any:
    """An ObjectRef of the actor's process id (a restart changes it)."""
    return actor.__ray_call__.remote(_pid)


def actor_node(actor: Any) -> Any:
    """An ObjectRef of the Ray node the actor runs on (placement checks, debugging)."""
    return actor.__ray_call__.remote(_node_id)


def call_each(actors: list[Any], fn: Any, timeout_s: float) -> None:
    """`fn(hosted object)` on every actor at once, waited for up to `timeout_s`, failures ignored: for
    clean-up before actors go, where a dead or hung actor has nothing left to clean."""
    import ray

    calls = [actor.__ray_call__.remote(fn) for actor in actors]
    ray.wait(calls, num_returns=len(calls), timeout=timeout_s)


def _shut_down(obj: Any) -> None:
    shutdown = getattr(obj, "shutdown", None)  # hosted classes with processes of their own (VLLMEngine) have one
    if callable(shutdown):
        shutdown()


def stop_actors(actors: list[Any], timeout_s: float = 60.0) -> None:
    """Stop `actors` for good: each hosted object's own `shutdown()` first, then `ray.kill`.

    ray.kill alone is a SIGKILL: a vLLM engine's worker processes die with the actor, but the shared
    memory queues they created (about 400 MiB per engine in /dev/shm, which is RAM) are never unlinked,
    and a test suite or a sweep that starts many engines runs the node out of memory. A shutdown that
    does not answer within `timeout_s` (a hung or dead actor) is not waited for."""
    import ray

    try:
        call_each(actors, _shut_down, timeout_s)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def kill_on_exit(stack: ExitStack, actors: list[Any]) -> list[Any]:
    """Stop `actors` when `stack` closes (a recipe's run ends, normally or not): no leaked processes,
    no leaked shared memory."""
    stack.callback(stop_actors, actors)
    return actors

"""Spawning Ray actors: resources, placement groups, restarts (the cluster itself: pipeline/placement.py).

Ray hosts plain classes (a rollout engine, a reward scorer, a rule matcher), wrapped at spawn time
only, so the same classes run in-process in tests and notebooks. An actor's surface is its hosted
class's methods plus the small mixins the spawn declares: `ActorProcess` (every actor: its pid, its
node, a clean stop) and, on rollout actors, the receiving side of the weight transports
(`pipeline.weight_sync.WeightReceiver`). Every call through an actor is one of those methods
(`actor.generate.remote(...)`, `actor.pid.remote()`); no free function is run inside an actor, and
per-process state lives on the actor object. Calling groups of actors (fan-out, timeouts, restarts,
retries) is pipeline/actor_calls.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ActorProcess:
    """What every pipeline actor answers besides its hosted object's own methods."""

    def pid(self) -> int:
        """The actor's process id (a restart changes it)."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node the actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def stop(self) -> None:
        """Release what the hosted object holds outside this process (a vLLM engine's worker processes
        and shared-memory queues) before the actor is killed."""
        shutdown = getattr(self, "shutdown", None)  # hosted classes with processes of their own (VLLMEngine)
        if callable(shutdown):
            shutdown()


def hosted(cls: type[T], num_threads: int, mixins: tuple[type, ...] = ()) -> type[T]:
    """`cls` as an actor runs it: its own methods plus `ActorProcess` and `mixins`, with torch's thread
    count set before its constructor (one actor per core on small machines: no oversubscription). A
    fresh class, so the plain one stays undecorated."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        import torch

        hide_gpus_unless_given()
        torch.set_num_threads(num_threads)
        cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (*mixins, ActorProcess, cls), {"__init__": __init__, "__doc__": cls.__doc__})


def hide_gpus_unless_given() -> None:
    """In an actor given no GPU, hide every GPU before anything touches CUDA. Ray (2.60 on, ray#54868) leaves
    CUDA_VISIBLE_DEVICES as the node's when an actor asks for none, so an engine or a scorer that picks
    `cuda` whenever CUDA is available would land on the learner's GPU, outside the memory plan."""
    import ray

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@dataclass
class StartingGroup:
    """A group's actors, created and still constructing: `await_ready` waits for them."""

    name: str
    actors: list[Any]
    group: Any  # its rl.config.ActorGroupConfig
    started: float = field(default_factory=time.monotonic)
    # Its Ray placement group (group.placement), if any: it reserves the bundles for as long as its creator
    # lives unless removed, so `stop_group` removes it with the actors.
    placement_group: Any = None

    def ready(self) -> list[Any]:
        """The actors, once every one is constructed (`await_ready` for this group alone)."""
        await_ready([self])
        return self.actors


def _bundle(group: Any) -> dict[str, Any]:
    """What each actor of `group` asks Ray for."""
    return {"CPU": group.num_cpus, **({"GPU": group.num_gpus} if group.num_gpus else {}), **group.resources}


def start_group(
    name: str, cls: type[T], kwargs: dict[str, Any], group: Any, mixins: tuple[type, ...] = ()
) -> StartingGroup:
    """Create `group.num_actors` actors of `cls(**kwargs)` with the group's resources and placement, without
    waiting for their constructors: several groups started one after the other construct at once (a vLLM
    engine's start-up overlaps a reward model's load), and `await_ready` waits for all of them.

    `group` is an `rl.config.ActorGroupConfig`: num_actors, num_cpus, num_gpus, resources (custom
    resource labels that pin actors to nodes), placement (a placement-group strategy or None),
    max_restarts, ready_timeout_s. The actors' methods are `cls`'s, `ActorProcess`'s and the `mixins`'."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if group.num_actors < 1:
        raise ValueError(f"{name}: num_actors must be >= 1, got {group.num_actors}")
    bundle = _bundle(group)
    strategy = None
    if group.placement:
        if group.placement not in PLACEMENT_STRATEGIES:
            raise ValueError(f"{name}: placement must be one of {PLACEMENT_STRATEGIES}, got {group.placement!r}")
        strategy = placement_group([dict(bundle) for _ in range(group.num_actors)], strategy=group.placement)
        try:
            ray.get(strategy.ready(), timeout=group.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(strategy)
            raise TimeoutError(
                f"{name}: Ray could not place {group.num_actors} x {bundle} ({group.placement}) within "
                f"{group.ready_timeout_s:.0f}s; the cluster has {ray.available_resources()} free"
            ) from None
    actor_cls = ray.remote(hosted(cls, max(1, int(group.num_cpus)), mixins))
    actors = []
    for i in range(group.num_actors):
        options: dict[str, Any] = dict(
            num_cpus=group.num_cpus,
            num_gpus=group.num_gpus,
            resources=dict(group.resources) or None,
            max_restarts=group.max_restarts,
            name=None,
        )
        if strategy is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=strategy, placement_group_bundle_index=i
            )
        actors.append(actor_cls.options(**options).remote(**kwargs))
    return StartingGroup(name, actors, group, placement_group=strategy)


def await_ready(groups: list[StartingGroup]) -> None:
    """Wait until every actor of `groups` is placed and constructed, each group within its ready_timeout_s
    of its start. Fails fast and clearly: a group that is not ready in time is an error naming it and what
    it asked for, never a silent wait; on any failure every actor of `groups` is killed, so nothing that
    was starting alongside is left behind."""
    import ray

    pids = [[actor.pid.remote() for actor in g.actors] for g in groups]  # every constructor, at once
    try:
        for g, group_pids in zip(groups, pids, strict=True):
            try:
                ray.get(group_pids, timeout=max(0.0, g.started + g.group.ready_timeout_s - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(
                    f"{g.name}: {g.group.num_actors} actor(s) of {_bundle(g.group)} were not placed "
                    f"and constructed within {g.group.ready_timeout_s:.0f}s (ready_timeout_s); the "
                    f"cluster has {ray.available_resources()} free"
                ) from None
            log.info(
                "%s: %d actor(s) ready (%s CPU, %s GPU each%s)",
                g.name,
                len(g.actors),
                g.group.num_cpus,
                g.group.num_gpus,
                f", {g.group.placement}" if g.group.placement else "",
            )
    except BaseException:
        for g in groups:
            for actor in g.actors:
                ray.kill(actor, no_restart=True)
            _remove_placement(g)
        raise


def call_each(actors: list[Any], call: Callable[[Any], Any], timeout_s: float) -> None:
    """`call(actor)` (an ObjectRef: `lambda a: a.stop.remote()`) on every actor at once, waited for up to
    `timeout_s`, failures ignored: for clean-up before actors go, where a dead or hung actor has nothing
    left to clean."""
    import ray

    refs = [call(actor) for actor in actors]
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def stop_actors(actors: list[Any], timeout_s: float = 60.0) -> None:
    """Stop `actors` for good: each one's `stop()` first (its hosted object's `shutdown()`), then `ray.kill`.

    ray.kill alone is a SIGKILL: a vLLM engine's worker processes die with the actor, but the shared
    memory queues they created (about 400 MiB per engine in /dev/shm, which is RAM) are never unlinked,
    and a test suite or a sweep that starts many engines runs the node out of memory. A stop that
    does not answer within `timeout_s` (a hung or dead actor) is not waited for."""
    import ray

    try:
        call_each(actors, lambda actor: actor.stop.remote(), timeout_s)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _remove_placement(group: StartingGroup) -> None:
    if group.placement_group is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group.placement_group)
        group.placement_group = None


def stop_group(group: StartingGroup, timeout_s: float = 60.0) -> None:
    """Stop a group's actors (`stop_actors`) and give back its placement group's reservation: the next run
    on the same cluster (`brl compare`'s) would otherwise wait for GPUs that never free up."""
    try:
        stop_actors(group.actors, timeout_s)
    finally:
        _remove_placement(group)


def stopped_on_exit(stack: ExitStack, group: StartingGroup) -> StartingGroup:
    """Stop `group` (`stop_group`) when `stack` closes (a recipe's run ends, normally or not): no leaked
    processes, no leaked shared memory, no leaked reservation."""
    stack.callback(stop_group, group)
    return group

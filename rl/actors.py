"""The only module that spawns Ray actors: cluster start/join, placement, resources, restarts.

Every actor is a `Host` around a plain object built by a factory (a rollout engine, a reward
scorer, a rule matcher), so the same classes run in-process in tests and in notebooks. Ray wraps
`Host` at spawn time; nothing else in the project is decorated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

log = logging.getLogger(__name__)

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class Host:
    """Builds `factory(**kwargs)` inside the actor process and forwards method calls to it."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict[str, Any], num_threads: int | None = None):
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)  # one actor per core on small machines, no oversubscription
        self.obj = factory(**kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)

    def get(self, attribute: str) -> Any:
        return getattr(self.obj, attribute)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks, debugging)."""
        import ray

        return ray.get_runtime_context().get_node_id()


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join a cluster (`address`: "auto", "ray://host:10001", "host:6379") or start a local one.

    A local cluster is shut down on exit; a joined cluster is only disconnected from. Ray's token
    authentication stays as Ray configures it; the dashboard is off for local clusters.
    """
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) owns the cluster
        yield
        return
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray cluster with %s CPUs", num_cpus or "all")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def spawn_group(name: str, factory: Callable[..., Any], kwargs: dict[str, Any], group: Any) -> list[Any]:
    """`group.num_actors` actors of `Host(factory, kwargs)` with the group's resources and placement.

    `group` is an `rl.config.ActorGroupConfig`: num_actors, num_cpus, num_gpus, resources (custom
    resource labels that pin actors to nodes), placement (a placement-group strategy or None),
    max_restarts.
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
    remote_host = ray.remote(Host)
    actors = []
    for i in range(group.num_actors):
        options: dict[str, Any] = dict(
            num_cpus=group.num_cpus, num_gpus=group.num_gpus, resources=dict(group.resources) or None,
            max_restarts=group.max_restarts, name=None,
        )
        if strategy is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=strategy, placement_group_bundle_index=i)
        actors.append(remote_host.options(**options).remote(factory, kwargs, max(1, int(group.num_cpus))))
    # Fail fast (and clearly) if an actor cannot be constructed or placed.
    ray.get([a.pid.remote() for a in actors], timeout=group.ready_timeout_s)
    log.info("%s: %d actor(s) ready (%s CPU, %s GPU each%s)", name, len(actors), group.num_cpus, group.num_gpus,
             f", {group.placement}" if group.placement else "")
    return actors


def kill_on_exit(stack: ExitStack, actors: list[Any]) -> list[Any]:
    """Kill `actors` when `stack` closes (a recipe's run ends, normally or not): no leaked processes."""
    import ray

    def kill() -> None:
        for actor in actors:
            ray.kill(actor, no_restart=True)

    stack.callback(kill)
    return actors

"""Where the learner and the actors run: GPUs checked before anything loads, then Ray started (or
joined) with them, the learner's share reserved in Ray and this process pinned to it.

The learner trains in this process (the driver), or on Ray Train workers (`learner.num_workers > 1`,
placed by Ray like the actors, their GPUs counted here up front); the rollout and reward-model actors
are Ray's. On a GPU node, two things must hold: the learner's process sees exactly the GPU(s) it trains on (else
transformers counts every GPU of the node and TRL refuses DataParallel), and Ray never hands that
GPU share to an actor. Both come from one mechanism: the learner's share is a placement-group bundle
in the same Ray cluster as the actors, and this process is pinned (CUDA_VISIBLE_DEVICES) to the GPU
that Ray put the bundle on, before CUDA is initialised here. Fractional shares work the same way
(a learner, a rollout actor and a reward model sharing one GPU). A config asking for more GPUs than there
are is refused up front, naming the numbers.

Nothing here initialises CUDA: GPUs are counted with NVML (torch's device_count before CUDA is
initialised) and `brl` sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that no import does it first.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.layout import Layout, actor_groups
from rl.config import ConfigError

log = logging.getLogger(__name__)

# Ray hands a killed actor's resources back once its process has exited, a moment after ray.kill returns:
# the previous run of `brl compare` (or a test) may still hold them when the next one checks.
RELEASE_WAIT_S = 15.0


@dataclass(frozen=True)
class Request:
    """What one learner process or actor asks the cluster for."""

    who: str  # "learner", "rollout actor 2", "reward-model actor 0"
    gpus: float = 0.0
    cpus: float = 0.0  # Ray CPUs (the in-process learner is the driver itself: it takes none)
    labels: tuple[tuple[str, float], ...] = ()  # custom resources that pin it to nodes


def learner_gpus(cfg: Any, machine_gpus: int) -> float:
    """GPUs per learner worker: `learner.gpus_per_worker`, or 1 on a machine with GPUs, 0 without."""
    g = cfg.learner.gpus_per_worker
    return (1.0 if machine_gpus > 0 else 0.0) if g is None else float(g)


def resource_requests(cfg: Any, machine_gpus: int) -> list[Request]:
    """Everything a GRPO config asks the cluster for: the learner's share(s) and, with Ray, each actor's."""
    learner = cfg.learner
    share = learner_gpus(cfg, machine_gpus)
    if learner.num_workers == 1:
        out = [Request("learner", share)]
    else:
        out = [
            Request(f"learner worker {i}", share, learner.num_cpus_per_worker, tuple(learner.resources.items()))
            for i in range(learner.num_workers)
        ]
    return out + [
        Request(f"{name} actor {i}", group.num_gpus, group.num_cpus, tuple(group.resources.items()))
        for name, group in actor_groups(cfg)
        for i in range(group.num_actors)
    ]


def gpu_requests(cfg: Any, machine_gpus: int) -> list[Request]:
    """The GPU shares of `resource_requests` (the learner's, and with Ray each actor's)."""
    return [r for r in resource_requests(cfg, machine_gpus) if r.gpus > 0]


def pack(requests: list[Request], num_gpus: int) -> list[list[Request]]:
    """Assign the requests to `num_gpus` GPUs the way Ray can place them: a whole number of GPUs takes
    whole GPUs; a fraction shares one GPU with others (first fit, largest first). Raises ConfigError,
    naming the numbers, when they do not fit."""
    for r in requests:
        if r.gpus > 1 and r.gpus != int(r.gpus):
            raise ConfigError(f"{r.who} asks for {r.gpus} GPUs: more than one GPU must be a whole number")
    free = [1.0] * num_gpus
    placed: list[list[Request]] = [[] for _ in range(num_gpus)]
    for r in sorted(requests, key=lambda r: -r.gpus):
        need = math.ceil(r.gpus) if r.gpus >= 1 else 1
        slots = [i for i, f in enumerate(free) if f >= min(r.gpus, 1.0) - 1e-9]
        if len(slots) < need:
            total = sum(q.gpus for q in requests)
            asked = ", ".join(f"{who}: {g:g}" for who, g in _summary(requests))
            raise ConfigError(
                f"the config asks for {total:g} GPUs ({asked}) and they do not fit on the {num_gpus} "
                f"GPU(s) available (a whole GPU per whole-number request, fractions packed): lower "
                f"the num_gpus of an actor group, the number of actors or learner.gpus_per_worker"
            )
        for i in slots[:need] if r.gpus >= 1 else slots[:1]:
            free[i] -= min(r.gpus, 1.0)
            placed[i].append(r)
    return placed


def _summary(requests: list[Request], amount: Any = lambda r: r.gpus) -> list[tuple[str, float]]:
    """'rollout actor 0..5' collapsed to one entry per group, with the group's total `amount`."""
    totals: dict[str, float] = {}
    for r in requests:
        group = r.who.rsplit(" ", 1)[0] if r.who[-1].isdigit() else r.who
        totals[group] = totals.get(group, 0.0) + amount(r)
    return [(who, total) for who, total in totals.items() if total > 0]


def check_resources(
    reqs: list[Request], where: str, cpus: float, gpus: float, labels: dict[str, float], local_gpus: int | None = None
) -> None:
    """Refuse, naming the numbers, a config whose requests the cluster cannot hold: GPUs (packed per GPU
    on a local cluster, `local_gpus`; totals on a cluster this process joins), CPUs and every custom
    resource label. Ray would otherwise leave what does not fit pending, silently, for ever."""
    if local_gpus is not None:
        pack([r for r in reqs if r.gpus > 0], local_gpus)
    needs = [("GPU", gpus, lambda r: r.gpus), ("CPU", cpus, lambda r: r.cpus)]
    needs += [
        (label, labels.get(label, 0.0), lambda r, k=label: dict(r.labels).get(k, 0.0))
        for label in sorted({k for r in reqs for k, _ in r.labels})
    ]
    for name, have, amount in needs:
        if name == "GPU" and local_gpus is not None:
            continue
        total = sum(amount(r) for r in reqs)
        if total > have + 1e-9:
            asked = ", ".join(f"{who}: {n:g}" for who, n in _summary(reqs, amount))
            hint = {
                "GPU": "lower the num_gpus of an actor group, the number of actors or learner.gpus_per_worker",
                "CPU": "lower the num_cpus of an actor group or learner.num_cpus_per_worker (fractions share a "
                "core), or raise ray.num_cpus (logical CPUs: a local cluster may oversubscribe its cores)",
            }.get(
                name,
                f"start nodes with that label (`ray start --resources='{{\"{name}\": N}}'`) and "
                f"join them with ray.address",
            )
            raise ConfigError(f"the config asks for {total:g} {name} ({asked}) but {where} has {have:g}: {hint}")


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without initialising CUDA: CUDA_VISIBLE_DEVICES if set, else
    every GPU NVML sees (none on a machine without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML before CUDA is initialised


def _pin(gpu_ids: list[str]) -> None:
    """This process uses exactly `gpu_ids` (before CUDA initialises; afterwards it would be too late)."""
    import torch

    if torch.cuda.is_initialized() and gpu_ids != visible_gpus():
        raise RuntimeError(
            f"CUDA was initialised in this process before the learner's GPUs ({gpu_ids}) were chosen; "
            "run through `brl`, or set CUDA_VISIBLE_DEVICES before anything touches CUDA"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)


def _assigned_gpu_ids() -> list[str]:
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


@dataclass
class Placement:
    learner_gpu_ids: list[str]  # what this process (the learner) trains on
    cluster_gpus: float  # GPUs in the Ray cluster (0 without Ray)


@contextmanager
def placed(cfg: Any) -> Iterator[Placement]:
    """Check the GPUs `cfg` asks for, start (or join) Ray with them, reserve the learner's share and pin
    this process to it. Restores this process's CUDA_VISIBLE_DEVICES (and stops a cluster it started)
    on exit."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        layout = Layout.of(cfg)
        if layout.ray and layout.learner_workers > 1:  # Ray Train places the learner's workers
            with ray_cluster(cfg) as cluster_gpus:
                yield Placement([], cluster_gpus)
        elif layout.ray:
            with ray_cluster(cfg) as cluster_gpus, _learner_share(cfg, cluster_gpus) as ids:
                yield Placement(ids, cluster_gpus)
        else:
            gpus = _local_gpus(cfg)
            check_local_resources(cfg)  # (no Ray: the GPUs alone)
            ids = gpus[: math.ceil(learner_gpus(cfg, len(gpus)))]
            if ids:
                _pin(ids)
            yield Placement(ids, 0.0)
    finally:
        _restore_visible_gpus(saved)


def _restore_visible_gpus(saved: str | None) -> None:
    """Give this process back the CUDA_VISIBLE_DEVICES it had before a run pinned it, unless CUDA has been
    initialised since: CUDA read the pinned mask once and keeps it, so restoring the old one would describe
    GPUs this process can no longer reach, and the next run's `_pin` (`brl compare`'s second run) refuses."""
    import torch

    if torch.cuda.is_initialized():
        return
    if saved is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _local_gpus(cfg: Any) -> list[str]:
    return visible_gpus() if cfg.ray.num_gpus is None else [str(i) for i in range(cfg.ray.num_gpus)]


def _local_cpus(cfg: Any) -> float:
    return cfg.ray.num_cpus or os.cpu_count() or 1


def check_local_resources(cfg: Any) -> None:
    """What a run on this machine asks for (GPUs without Ray; CPUs, GPUs and labels for a local Ray cluster),
    against this machine: a config that cannot fit is refused before Ray starts or anything loads. A run
    that joins a cluster (`ray.address`, or one this process is connected to) is checked when it connects."""
    local = _local_gpus(cfg)
    if not cfg.ray.enabled:
        pack(gpu_requests(cfg, len(local)), len(local))
        return
    import ray

    if cfg.ray.address or ray.is_initialized():
        return
    cpus = _local_cpus(cfg)  # a local cluster has no custom labels
    check_resources(
        resource_requests(cfg, len(local)),
        f"the local Ray cluster (ray.num_cpus={cpus:g}, {len(local)} GPUs)",
        cpus,
        len(local),
        {},
        local_gpus=len(local),
    )


def _check_against(requests: list[Request], where: str, resources: dict[str, float]) -> None:
    """check_resources against a Ray resource dict (ray.cluster_resources() or ray.available_resources())."""
    check_resources(requests, where, resources.get("CPU", 0.0), resources.get("GPU", 0.0), resources)


def _wait_until_free(requests: list[Request], where: str) -> None:
    """Refuse `requests` if the connected cluster's free resources do not hold them within RELEASE_WAIT_S:
    what stopped actors still hold comes back within moments."""
    import ray

    deadline = time.monotonic() + RELEASE_WAIT_S
    waiting = False
    while True:
        try:
            return _check_against(requests, where, ray.available_resources())
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            if not waiting:
                log.info(
                    "%s has too little for this run; waiting up to %gs for what stopped actors still hold",
                    where,
                    RELEASE_WAIT_S,
                )
                waiting = True
            time.sleep(0.5)


@contextmanager
def ray_cluster(cfg: Any) -> Iterator[float]:
    """The Ray cluster `cfg.ray` names, with everything the config asks for (`resource_requests`: GPUs, CPUs,
    custom labels) checked against it first; yields its GPU count. `ray.address` unset: a new local
    cluster, even if another runs on this machine (`ray.address: auto` joins that one), shut down on exit.
    A cluster this process is already connected to (a test, a notebook, `brl compare`) is used as it is,
    checked against what it has free."""
    import ray

    if ray.is_initialized():
        total = ray.cluster_resources()
        requests = resource_requests(cfg, int(total.get("GPU", 0)))
        where = "the Ray cluster this process is connected to"
        _check_against(requests, where, total)  # what it could never hold: refused at once
        _wait_until_free(requests, f"{where} (free)")
        yield total.get("GPU", 0.0)
        return
    if cfg.ray.address:
        log.info("joining the Ray cluster at %s", cfg.ray.address)
        ray.init(address=cfg.ray.address, log_to_driver=True)
        total = ray.cluster_resources()
        gpus = total.get("GPU", 0.0)
        try:
            _check_against(resource_requests(cfg, int(gpus)), f"the Ray cluster at {cfg.ray.address}", total)
        except ConfigError:
            ray.shutdown()
            raise
    else:
        local = _local_gpus(cfg)
        cpus = _local_cpus(cfg)
        check_local_resources(cfg)  # refused here at the latest, before anything starts
        log.info("starting a local Ray cluster with %g CPUs and %d GPUs", cpus, len(local))
        # address="local": a new cluster even if another runs on this machine. Ray numbers its GPUs after
        # the CUDA_VISIBLE_DEVICES it starts with, so the ids it hands out are this machine's.
        if cfg.ray.num_gpus is None and local:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(local)
        # Ray Train reads its worker-group start timeout in the controller, a process of this cluster.
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", f"{cfg.learner.ready_timeout_s:g}")
        ray.init(address="local", num_cpus=cpus, num_gpus=len(local), include_dashboard=False, log_to_driver=True)
        gpus = float(len(local))
    try:
        yield gpus
    finally:
        ray.shutdown()


@contextmanager
def _learner_share(cfg: Any, cluster_gpus: float) -> Iterator[list[str]]:
    """Reserve the learner's GPU share on this node for the run and pin this process to the GPU Ray
    chose for it (read back by a task inside the reservation); yields those GPU ids."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    share = learner_gpus(cfg, int(cluster_gpus))
    if share <= 0:
        yield []
        return
    node = f"node:{ray.util.get_node_ip_address()}"
    group = placement_group([{"GPU": share, node: 0.001}], strategy="STRICT_PACK")
    try:
        ray.get(group.ready(), timeout=cfg.rollout.actors.ready_timeout_s)
        probe = ray.remote(_assigned_gpu_ids).options(
            num_cpus=0, num_gpus=share, scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0)
        )
        ids = ray.get(probe.remote(), timeout=cfg.rollout.actors.ready_timeout_s)
        _pin(ids)
        log.info("learner: GPU %s (%g of it); %g GPUs left to the actors", ",".join(ids), share, cluster_gpus - share)
        yield ids
    finally:
        remove_placement_group(group)

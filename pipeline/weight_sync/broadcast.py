"""Weight sync by a bucketed broadcast from the learner's device: NCCL between GPUs (across nodes
too), gloo on CPUs, for engines that load a state dict (the transformers engine; vLLM engines use
vLLM's own weight-transfer engine, vllm_transfer.py).

The learner is rank 0 of a process group with every rollout actor (collective.py). Each bucket is
cast into a staging buffer on the learner's device and broadcast once; every actor receives it into a
buffer of its own and loads the views with the engine's `load_weights`. The actors' side is the
`WeightReceiver` mixin every rollout actor declares (`join_broadcast`, `receive_broadcast`,
`leave_broadcast`; the group and the buffer live on the actor), so an engine needs nothing for it.
The group is formed at the first sync and re-formed when Ray restarts an actor; an actor that dies inside a
round ends the sync in an ActorFailureError (the run stops with a checkpoint to resume from), never a hang:
the round's group is aborted (NCCL: its kernels waiting on the dead peer end), and a bucket of a fused layer
(q/k/v, gate/up) is never split (`export.fused_runs`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch

from pipeline.actor_calls import ActorCalls, gather
from pipeline.weight_sync.collective import (
    GROUP_BACKENDS,
    abort_group,
    broadcast,
    close_group,
    failed_ref,
    kill_stuck,
    open_group,
    serve_store,
    unfinished,
    watched,
)
from pipeline.weight_sync.export import Staging, aligned, as_weights, bucket_bytes_for, check_rereadable, fused_runs
from policies.rollout_engine import indexed_device
from rl.errors import ActorFailureError

log = logging.getLogger(__name__)


class BroadcastSync:
    """The learner's side; see the module docstring."""

    def __init__(self, calls: ActorCalls, backend: str, bucket_bytes: int = 512 << 20):
        if backend not in GROUP_BACKENDS:
            raise ValueError(f"broadcast backend must be one of {GROUP_BACKENDS}, got {backend!r}")
        self.calls = calls
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        # Where buckets are staged: this process's GPU (with its index, as NCCL wants it), or the CPU.
        self.device = indexed_device("cuda") if backend == "nccl" else torch.device("cpu")
        self.group: Any = None
        self.name = ""
        self.pids: list[int] = []  # the actor processes in the group (a restart changes one)
        self._store: Any = None
        self._staging: Staging | None = None
        self._last: Any = None
        self._learner_thread: threading.Thread | None = None
        self.stuck: list[int] = []  # actors left blocked in a broken round (killed at close)

    def send(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._learner_thread = threading.current_thread()
        self._last = as_weights(state)
        if self.group is None:
            self._open()
        else:
            restarted = self.calls.restarted_since(self.pids)
            if restarted:
                log.warning("rollout actors %s were restarted; re-forming the weight-sync group", restarted)
                self._open()
        self._stream(self._last, version)

    def restore(self, actor: int, version: int) -> None:
        """A restarted actor lost its place in the group: re-form it and broadcast the last weights again."""
        if self.group is None:  # no group yet: the next sync forms one with everybody
            return
        if self._last is None:  # nothing sent yet: the restarted actor holds the initial weights
            self._open()
            return
        check_rereadable(self._last, self._learner_thread, actor, "rollout.weight_sync=broadcast")
        self._open()
        self._stream(self._last, version)

    def close(self) -> None:
        kill_stuck(self.calls.actors, self.stuck, "weight-sync broadcast")
        self.stuck = []
        if self.group is not None:
            import ray
            from ray.exceptions import RayError

            try:
                ray.get([a.leave_broadcast.remote() for a in self.calls.actors], timeout=self.calls.timeout_s)
            except RayError as e:
                log.warning("an actor could not leave the weight-sync group: %s", e)
            close_group(self.group)
        self.group = self._store = self._last = None

    def _open(self) -> None:
        """Form a new group with every actor (each leaves the old one first)."""
        import ray

        if self.group is not None:
            close_group(self.group)
        actors = self.calls.actors
        world_size = 1 + len(actors)
        timeout = timedelta(seconds=self.calls.timeout_s)
        host = ray.util.get_node_ip_address()
        self._store = serve_store(host, world_size, timeout)
        self.name = f"brl-weights-{uuid.uuid4().hex[:8]}"
        joins = [
            a.join_broadcast.remote(
                self.name, self.backend, host, self._store.port, rank, world_size, self.calls.timeout_s
            )
            for rank, a in enumerate(actors, start=1)
        ]
        self.group = open_group(self.backend, self._store, self.name, 0, world_size, timeout)  # gloo: waits for all
        gather(joins, self.calls.timeout_s, "rollout actors (joining the weight-sync group)")
        self.pids = self.calls.pids()
        log.info("weight-sync group (%s broadcast) formed: learner + %d actors", self.backend, len(actors))

    def _stream(self, weights: Any, version: int) -> None:
        manifest: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        bucket = bucket_bytes_for(weights, self.bucket_bytes)
        for names, run_bytes in fused_runs(weights):  # a fused layer's parameters go in one bucket
            staging = self._staging_for(run_bytes, bucket)
            if manifest and not staging.fits(run_bytes):
                self._round(manifest, version)
                manifest = []
                staging = self._staging_for(run_bytes, bucket)
            for name in names:
                source = weights.source(name)
                dtype = weights.target_dtype(source)
                offset = aligned(staging.used)
                staging.put(source, dtype)  # to the staging device and dtype in one copy
                manifest.append((name, dtype, tuple(source.shape), offset))
        if manifest:
            self._round(manifest, version)

    def _staging_for(self, nbytes: int, bucket: int) -> Staging:
        staging = self._staging
        if staging is None or (staging.used == 0 and staging.nbytes < nbytes):
            staging = self._staging = Staging(max(bucket, aligned(nbytes)), self.device)
        return staging

    def _round(self, manifest: list, version: int) -> None:
        staging = self._staging
        nbytes = staging.used
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()  # the bucket is complete before NCCL reads it
        actors = self.calls.actors
        receiving = [a.receive_broadcast.remote(self.name, manifest, nbytes, version) for a in actors]

        def dead() -> str | None:
            i = failed_ref(receiving)
            return None if i is None else f"rollout actor {i}"

        try:
            watched(
                lambda: broadcast(self.group, staging.filled(), src=0),
                dead,
                self.calls.timeout_s,
                f"weight-sync broadcast of version {version}",
            )
            gather(receiving, self.calls.timeout_s, f"rollout actors (loading weights version {version})")
        except Exception as e:  # a dead peer (Ray's error or the collective's), or a timeout
            abort_group(self.group)  # NCCL: frees the learner's stream of the round that will never finish
            self.group = None  # broken: the next sync re-forms it
            self.stuck = unfinished(receiving)
            raise ActorFailureError(
                f"rollout actors: weight broadcast of version {version} failed mid-round: {e}"
            ) from e
        finally:
            staging.used = 0

"""The rollout actors as one engine: generation fanned out in order, weights kept in sync, versions.

`RolloutPool` shards each generation call across N actors (each hosting a `RolloutEngine`) and
gathers the groups back in request order; weight syncs go through the transport that
`rollout.weight_sync` names (pipeline/weight_sync/). An actor that dies
mid-call is restarted by Ray, given the weights it held (the transport's `restore`) and sent only its
share again (ActorCalls). `engine_spec` turns the config into the engine class and arguments each actor
is built with.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from pipeline.actor_calls import ActorCalls, gather, shard
from pipeline.actors import StartingGroup, start_group
from pipeline.weight_sync import Location, engine_options, learner_location, make_weight_sync
from policies.rollout_engine import Rollout, RolloutRequest, SamplingParams
from rl.config import PolicyConfig, RolloutConfig


def engine_spec(rollout: RolloutConfig, policy: PolicyConfig, policy_path: str) -> tuple[type, dict[str, Any]]:
    """(engine class, constructor kwargs) for the (checked) `rollout` and `policy` sections; each rollout
    actor hosts `cls(**kwargs)`."""
    if rollout.backend == "hf":
        from policies.hf_engine import HFEngine

        return HFEngine, dict(
            model=policy_path,
            dtype=rollout.dtype or policy.dtype,
            device=rollout.device,
            max_pixels=policy.max_pixels,
            trust_remote_code=policy.trust_remote_code,
        )
    from policies.vllm_engine import VLLMEngine

    return VLLMEngine, dict(
        path=policy_path,
        dtype=rollout.dtype or policy.dtype,
        max_pixels=policy.max_pixels,
        engine_kwargs=dict(rollout.vllm),
        sync_timeout_s=rollout.timeout_s,
        **engine_options(rollout.weight_sync),
    )


def start_rollout_actors(engine_cls: type, kwargs: dict[str, Any], group: Any) -> StartingGroup:
    """`group.num_actors` rollout actors hosting `engine_cls(**kwargs)`, with the receiving side of the
    weight transports (`WeightReceiver`) mixed in, created and constructing (`pipeline.actors.await_ready`)."""
    from pipeline.weight_sync.receiver import WeightReceiver

    return start_group("rollout", engine_cls, kwargs, group, mixins=(WeightReceiver,))


def spawn_rollout_actors(engine_cls: type, kwargs: dict[str, Any], group: Any) -> list[Any]:
    """`start_rollout_actors`, waited for: the actor handles, every engine constructed."""
    return start_rollout_actors(engine_cls, kwargs, group).ready()


class RolloutPool:
    """N rollout actors, each hosting a RolloutEngine, used as one. `rollout`: the `rollout:` section
    (an `rl.config.RolloutConfig`: timeouts, retries, the weight transport); `learner`: where the
    learner's weights live (default: this process on the CPU)."""

    def __init__(self, actors: list[Any], rollout: RolloutConfig, learner: Location | None = None):
        self.calls = ActorCalls(actors, rollout.timeout_s, rollout.actors.max_retries, "rollout actors")
        self.actors = actors
        self.sync = make_weight_sync(
            rollout.weight_sync, self.calls, learner or learner_location([]), int(rollout.bucket_mb * 2**20)
        )
        self.version = 0  # the policy version every actor holds

    @property
    def restarts(self) -> int:
        return self.calls.restarts

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        parts = shard(requests, len(self.actors))
        starts = [0, *itertools.accumulate(len(p) for p in parts)]

        # Actor i's share starts at request starts[i] of the call, and is seeded as that request: every
        # (prompt, sample) keeps the seed it has in the whole call whichever actor makes it, so seeds
        # never repeat across actors, and a retried share reproduces exactly what it would have made.
        def submit(i: int) -> Any:
            seeded = dataclasses.replace(sampling, seed=sampling.request_seed(starts[i]))
            return self.actors[i].generate.remote(parts[i], seeded)

        results = self.calls.run(
            submit, [i for i, part in enumerate(parts) if part], restore=lambda i: self.sync.restore(i, self.version)
        )
        return [group for part in results for group in part]

    def load_weights(self, named_tensors: Mapping[str, Any], version: int) -> None:
        """Every actor holds `named_tensors` as policy `version` when this returns."""
        self.sync.send(named_tensors, version)
        self.version = version

    def versions(self) -> list[int]:
        return gather(
            [a.loaded_version.remote() for a in self.actors], self.calls.timeout_s, "rollout actors (version)"
        )

    def close(self) -> None:
        """Let go of the weight transport (a transfer group is left; the engines go with the actors)."""
        self.sync.close()

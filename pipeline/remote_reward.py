"""A reward hosted on Ray actors, called like a local TRL reward function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.actor_calls import ActorCalls, shard
from policies.chat import share_equal_images
from reward.base import slice_columns

# Reward kwargs that only make sense in the driver process (TRL's callbacks and state objects).
DRIVER_ONLY = ("log_metric", "log_extra", "trainer_state", "environments")


class RemoteReward:
    """Samples split across the actors (each hosting a reward: `actor.__call__.remote(...)`), gathered
    in order; blocking, with a timeout, restarts and retries (pipeline/actor_calls.py).

    `reads`: the columns the hosted reward reads (None: it gets every column and the prompts). Only
    those travel: a rule matcher needs the completions and the ground truth, not the prompts' images
    (64 rows of 1024 x 1024 photos are 200 MB through the object store every step)."""

    def __init__(
        self,
        actors: list[Any],
        name: str,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        reads: Sequence[str] | None = None,
        counts_costs: bool = False,
        calibrates: bool = False,
    ):
        self.calls = ActorCalls(actors, timeout_s, max_retries, f"reward actors ({name})")
        self.actors = actors
        self.reads = None if reads is None else frozenset(reads)
        self.counts_costs = counts_costs  # the hosted reward has `metrics()` (its cost counters)
        # The hosted reward may estimate score statistics from its first call (a RewardModelScorer whose
        # checkpoint ships none): the first call then goes whole to actor 0, and its estimate to every
        # other actor and to any actor Ray restarts, so all of them standardise alike.
        self.calibrates = calibrates
        self.calibration: dict | None = None  # actor 0's estimate, once taken ({}: nothing to share)
        self.__name__ = name

    def metrics(self) -> dict[str, float]:
        """The hosted reward's cost counters since the last call, summed over the actors (none if it keeps none)."""
        if not self.counts_costs:
            return {}
        totals: dict[str, float] = {}
        for part in self.calls.all(lambda i: self.actors[i].metrics.remote(), "metrics"):
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
        return totals

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        estimating = self._estimating()
        k = 1 if estimating else min(len(self.actors), max(1, n))
        index_parts = shard(list(range(n)), k)
        columns = {key: v for key, v in columns.items() if key not in DRIVER_ONLY}
        if self.reads is not None:
            columns = {key: v for key, v in columns.items() if key in self.reads}
            prompts = prompts if "prompts" in self.reads else [None] * n
        if isinstance(columns.get("images"), list):
            columns["images"] = share_equal_images(columns["images"])  # each distinct image pickled once

        def submit(a: int) -> Any:
            idx = index_parts[a]
            return self.actors[a].__call__.remote(
                [prompts[i] for i in idx], [completions[i] for i in idx], **slice_columns(columns, idx, n)
            )

        results = self.calls.run(submit, [a for a, idx in enumerate(index_parts) if idx], restore=self._restore)
        if estimating:
            self.calibration = self.calls.run(lambda i: self.actors[i].calibration.remote(), [0])[0]
            self._share_calibration(range(1, len(self.actors)))
        return [v for part in results for v in part]

    def _estimating(self) -> bool:
        """Whether this call is the one the hosted reward estimates its score statistics from."""
        if not self.calibrates or self.calibration is not None:
            return False
        if self.calls.run(lambda i: self.actors[i].estimates_stats.remote(), [0])[0]:
            return True
        self.calibration = {}  # its statistics ship with the checkpoint: nothing to share
        return False

    def _restore(self, i: int) -> None:
        """A restarted actor gets the shared score statistics again (it would estimate its own)."""
        self._share_calibration([i])

    def _share_calibration(self, indices: Sequence[int]) -> None:
        if self.calibration:
            self.calls.run(lambda i: self.actors[i].adopt_calibration.remote(self.calibration), list(indices))

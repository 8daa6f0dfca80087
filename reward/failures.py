"""Failure accounting around any reward: exceptions, time-outs and NaN/inf become counted `None`s.

A reward that fails must never turn into a silent 0: TRL would then train towards it. `GuardedReward`
calls the wrapped reward with a time limit; if the whole batch raises, it retries one sample at a
time to isolate the offending samples; non-finite values become None. Each failure is logged with
the sample's index, counted in the step's metrics, and when a call's failure share exceeds
`max_failure_rate` the run stops with `RewardFailureError` (the recipe saves what it has first).

The guard is an async callable: TRL gathers async reward functions concurrently, so every reward
component of a step (an in-process rule, a scorer on Ray actors, a custom function) runs at the same
time, each in a worker thread, instead of one after another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from reward.base import reward_name, slice_columns

log = logging.getLogger(__name__)


_FAILED = object()  # a sample whose reward call failed (distinct from a reward's own None)


class RewardFailureError(RuntimeError):
    """Too many samples could not be scored: stop rather than train on missing rewards."""


@dataclass
class FailureStats:
    """Running totals for one reward, for reports and tests."""

    calls: int = 0
    samples: int = 0
    raised: int = 0
    timed_out: int = 0
    non_finite: int = 0
    unscored: int = 0  # the reward itself returned None (e.g. no ground truth): not a failure

    @property
    def failed(self) -> int:
        return self.raised + self.timed_out + self.non_finite


@dataclass
class GuardedReward:
    fn: Any
    timeout_s: float = 120.0
    max_failure_rate: float = 0.25
    name: str | None = None
    stats: FailureStats = field(default_factory=FailureStats)

    def __post_init__(self) -> None:
        self.__name__ = self.name or reward_name(self.fn)

    async def _call(self, prompts: list, completions: list, columns: dict) -> list:
        # The reward itself is synchronous: run it in a thread, so the event loop keeps the other
        # reward components going. A timed-out thread cannot be killed; it is abandoned.
        return await asyncio.wait_for(asyncio.to_thread(self.fn, prompts, completions, **columns), self.timeout_s)

    async def _isolate(self, prompts: list, completions: list, columns: dict, n: int) -> list:
        """After a batch failure: score one sample at a time so only the bad samples are lost."""
        out: list = []
        for i in range(n):
            one = slice_columns(columns, [i], n)
            try:
                value = (await self._call([prompts[i]], [completions[i]], one))[0]
            except asyncio.TimeoutError:  # (an alias of TimeoutError from 3.11)
                self.stats.timed_out += 1
                log.warning("reward %s: sample %d timed out after %.1fs", self.__name__, i, self.timeout_s)
                value = _FAILED
            except Exception as e:
                self.stats.raised += 1
                log.warning("reward %s: sample %d raised %s: %s", self.__name__, i, type(e).__name__, e)
                value = _FAILED
            out.append(value)
        return out

    async def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        log_metric = columns.get("log_metric")
        before = self.stats.failed
        start = time.perf_counter()
        try:
            values = await self._call(prompts, completions, columns)
            if len(values) != n:
                raise ValueError(f"returned {len(values)} rewards for {n} completions")
        except asyncio.TimeoutError:  # (an alias of TimeoutError from 3.11)
            log.warning(
                "reward %s: batch of %d timed out after %.1fs; scoring one by one", self.__name__, n, self.timeout_s
            )
            values = await self._isolate(prompts, completions, columns, n)
        except Exception as e:
            log.warning(
                "reward %s: batch of %d raised %s: %s; scoring one by one", self.__name__, n, type(e).__name__, e
            )
            values = await self._isolate(prompts, completions, columns, n)
        out = self._check(values)
        self.stats.calls += 1
        self.stats.samples += n
        failed_now = self.stats.failed - before
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/failed", float(failed_now))
            log_metric(f"timing/reward/{self.__name__}", time.perf_counter() - start)
            costs = getattr(self.fn, "metrics", None)  # what the call cost, for rewards that count it (a judge)
            for key, value in (costs() if callable(costs) else {}).items():
                log_metric(f"rewards/{self.__name__}/{key}", value)
        if n and failed_now / n > self.max_failure_rate:
            raise RewardFailureError(
                f"reward '{self.__name__}' failed on {failed_now} of {n} samples in one step "
                f"({failed_now / n:.0%} > reward.max_failure_rate={self.max_failure_rate:.0%}); "
                f"totals so far: {self.stats}. See the warnings above for each failing sample."
            )
        return out

    def _check(self, values: list) -> list[float | None]:
        """Floats stay; the reward's own None is counted as unscored; NaN/inf become counted failures."""
        out: list[float | None] = []
        for i, v in enumerate(values):
            if v is _FAILED:
                out.append(None)
                continue
            if v is None:
                self.stats.unscored += 1
                out.append(None)
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                self.stats.non_finite += 1
                log.warning("reward %s: sample %d gave a non-finite value %r", self.__name__, i, values[i])
                out.append(None)
            else:
                out.append(v)
        return out

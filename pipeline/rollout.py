"""TRL's `rollout_func` for generation on rollout actors, with lazy, versioned weight sync.

TRL's sampler repeats each prompt G (= num_generations) times in a row; we ask each engine for G
samples of each distinct prompt instead (one prefill per prompt, as vLLM's `n` does), then hand TRL
one completion per received prompt, in the order it sent them.

Weights are synced lazily, right before a generation that needs them (as TRL does for its own vLLM
path): every `sync_every` optimizer steps, so a rollout is at most `sync_every - 1` versions stale;
the lag of every rollout is checked against `max_staleness` and logged.

With `overlap`, the rollouts of step t+1 are generated (in a background thread that waits on the
actors) while the learner trains on step t: one-step-off-policy, as verl and OpenRLHF offer. Step
t+1's prompts are known ahead because the sampler's order is a function of (seed, epoch); if TRL
then asks for other prompts, the prefetch is dropped and the step generates synchronously.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.trl import log_metric, planned_prompts
from pipeline.weight_sync.export import PolicyWeights
from policies.chat import prompt_key
from policies.rollout_engine import Rollout, RolloutRequest, SamplingParams

log = logging.getLogger(__name__)


class StaleRolloutError(RuntimeError):
    """A rollout was made by weights older than the configured staleness bound allows."""


def group_prompts(prompts: list[Any], group_size: int) -> list[Any]:
    """The distinct prompts of a batch that TRL built by repeating each prompt `group_size` times.

    Raises if the batch does not have that shape (texts and images compared), rather than silently
    mis-assigning completions."""
    if group_size < 1 or len(prompts) % group_size:
        raise ValueError(f"{len(prompts)} prompts cannot be split into groups of {group_size}")
    firsts = prompts[::group_size]
    for g, first in enumerate(firsts):
        key = None
        for p in prompts[g * group_size : (g + 1) * group_size]:
            if p is first:
                continue
            key = key or prompt_key(first)
            if prompt_key(p) != key:
                raise ValueError(f"prompt group {g} mixes different prompts; expected {group_size} repeats in a row")
    return firsts


def version_lags(step: int, groups: list[list[Rollout]], max_staleness: int) -> list[int]:
    """How many optimizer steps behind the learner each rollout's weights are; raises past the bound."""
    lags = [step - r.version for g in groups for r in g]
    if lags and max(lags) > max_staleness:
        raise StaleRolloutError(
            f"a rollout is {max(lags)} policy versions behind the learner (rollout.max_staleness={max_staleness})"
        )
    return lags


def to_trl_output(groups: list[list[Rollout]]) -> dict[str, list]:
    """Flatten per-prompt groups into the dict TRL's rollout_func contract asks for."""
    flat = [r for group in groups for r in group]
    return {
        "prompt_ids": [r.prompt_ids for r in flat],
        "completion_ids": [r.completion_ids for r in flat],
        "logprobs": [r.logprobs for r in flat],
        "policy_version": [r.version for r in flat],
    }


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of optimizer step `step`: a function of (run seed, step) only, so a resumed
    run and a retried shard draw exactly the samples an uninterrupted run draws. A 48-bit hash: the
    step's (prompt, sample) seeds are this + 0 .. prompts x n - 1, and ranges of different steps
    overlap only by a 2^-48-scale chance, where consecutive seeds would collide for large batches."""
    digest = hashlib.blake2b(f"{seed}/{step}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def sampling_from_trl(args: Any, group_size: int, step: int) -> SamplingParams:
    """One source of truth for sampling: TRL's GRPOConfig (plus the step's seed)."""
    return SamplingParams(
        n=group_size,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k or 0,
        max_tokens=args.max_completion_length,
        seed=step_seed(args.seed, step),
    )


def logprob_gap(
    model: Any,
    processor: Any,
    requests: list[RolloutRequest],
    groups: list[list[Rollout]],
    temperature: float,
    limit: int = 4,
) -> list[float]:
    """|engine logprob - learner logprob| per token, for up to `limit` rollouts (cheap: one forward each)."""
    rows = [
        (req, r.prompt_ids, r.completion_ids, r.logprobs)
        for req, g in zip(requests, groups)
        for r in g
        if r.completion_ids
    ][:limit]
    return _gaps(model, processor, rows, temperature)


def output_logprob_gap(
    model: Any, processor: Any, prompts: list[Any], output: dict[str, list], temperature: float, limit: int
) -> list[float]:
    """logprob_gap over a rollout_func output (one row per prompt), on its first `limit` rows exactly:
    with a sharded learner every rank runs it at once, and each forward is a collective, so every rank
    makes the same number of them (rows with an empty completion included)."""
    rows = [
        (RolloutRequest(messages=p), pi, ci, lp)
        for p, pi, ci, lp in zip(prompts, output["prompt_ids"], output["completion_ids"], output["logprobs"])
    ][:limit]
    return _gaps(model, processor, rows, temperature)


def _gaps(model: Any, processor: Any, rows: list[tuple], temperature: float) -> list[float]:
    from policies.hf_engine import completion_logprobs

    was_training = model.training
    model.eval()
    gaps: list[float] = []
    for request, prompt_ids, completion_ids, logprobs in rows:
        mine = completion_logprobs(model, processor, request, prompt_ids, completion_ids, temperature)
        gaps += [abs(a - b) for a, b in zip(mine, logprobs)]
    model.train(was_training)
    return gaps


class Pool(Protocol):
    """What ActorRollouts generates on: rollout actors as one engine (pipeline/rollout_pool.py's RolloutPool)
    or the learner's own model (pipeline/colocated.py's ColocatedPool)."""

    version: int  # the policy version every engine holds

    @property
    def restarts(self) -> int: ...  # engines restarted after a death, over the pool's life

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]: ...

    def load_weights(self, weights: PolicyWeights, version: int) -> None: ...

    def versions(self) -> list[int]: ...

    def close(self) -> None: ...


@dataclass
class ActorRollouts:
    """A `rollout_func` that generates on a Pool and keeps its weights in sync with the learner."""

    pool: Pool
    sync_every: int = 1
    max_staleness: int = 1
    logprob_gap_samples: int = 4
    overlap: bool = False
    dtype: Any = None  # the engines' weights (a torch dtype; None: the learner's)
    # overlap: (step, keys of its distinct prompts, future of the groups) generated ahead for that step
    _ahead: tuple[int, list[tuple], Future] | None = field(default=None, repr=False)
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:  # sync_every, max_staleness and overlap were checked with the config
        if self.overlap:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")

    def sync(self, model: Any, version: int) -> float:
        """Push the learner's weights to every actor; returns seconds taken."""
        start = time.perf_counter()
        self.pool.load_weights(PolicyWeights(model, self.dtype), version)
        return time.perf_counter() - start

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        step = trainer.state.global_step
        group_size = trainer.num_generations
        firsts = group_prompts(prompts, group_size)
        requests = [RolloutRequest(messages=p) for p in firsts]
        start = time.perf_counter()
        groups = self._take_ahead(step, firsts)  # with overlap: only the wait the learner sees
        if groups is None:
            self._maybe_sync(trainer, step)  # timed on its own (timing/weight_sync)
            start = time.perf_counter()
            groups = self.pool.generate(requests, sampling_from_trl(trainer.args, group_size, step))
        seconds = time.perf_counter() - start
        if self.overlap:
            self._maybe_sync(trainer, step)
            self._start_ahead(trainer, step + 1)
        lags = version_lags(step, groups, self.max_staleness)
        tokens = sum(len(r.completion_ids) for g in groups for r in g)
        # The mismatch between the engine's logprobs and the learner's for the same tokens (as TRL
        # reports for vLLM): engine numerics, plus staleness when weights are synced every k steps.
        gaps = logprob_gap(
            trainer.accelerator.unwrap_model(trainer.model),
            trainer.processing_class,
            requests,
            groups,
            trainer.args.temperature,
            self.logprob_gap_samples,
        )
        if gaps:
            log_metric(trainer, "rollout/logprob_gap_mean", sum(gaps) / len(gaps))
            log_metric(trainer, "rollout/logprob_gap_max", max(gaps))
        log_metric(trainer, "timing/generate", seconds)
        log_metric(trainer, "rollout/tokens_per_s", tokens / seconds if seconds > 0 else 0.0)
        log_metric(trainer, "rollout/version_lag", sum(lags) / len(lags))
        return to_trl_output(groups)

    def close(self) -> None:
        """Stop generating ahead (the run is over)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._ahead = None

    def _maybe_sync(self, trainer: Any, step: int) -> None:
        if step - self.pool.version >= self.sync_every:
            log_metric(trainer, "timing/weight_sync", self.sync(trainer.accelerator.unwrap_model(trainer.model), step))

    def _start_ahead(self, trainer: Any, step: int) -> None:
        """Generate step `step`'s rollouts in the background with the weights the actors hold now."""
        max_steps = getattr(trainer.state, "max_steps", 0)
        planned = planned_prompts(trainer, step) if step < max_steps else None
        if not planned:
            return
        requests = [RolloutRequest(messages=p) for p in planned]
        sampling = sampling_from_trl(trainer.args, trainer.num_generations, step)
        future = self._executor.submit(self.pool.generate, requests, sampling)
        self._ahead = (step, [prompt_key(p) for p in planned], future)

    def _take_ahead(self, step: int, firsts: list[Any]) -> list[list[Rollout]] | None:
        if self._ahead is None:
            return None
        ahead_step, keys, future = self._ahead
        self._ahead = None
        groups = future.result()  # the actors' own timeouts and retries bound this wait
        if ahead_step == step and keys == [prompt_key(p) for p in firsts]:
            return groups
        log.warning(
            "rollouts generated ahead for step %d do not match step %d's prompts; generating now", ahead_step, step
        )
        return None

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

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from policies.engine import Rollout, RolloutRequest, SamplingParams

log = logging.getLogger(__name__)


class StaleRolloutError(RuntimeError):
    """A rollout was made by weights older than the configured staleness bound allows."""


def group_prompts(prompts: list[Any], group_size: int) -> list[Any]:
    """The distinct prompts of a batch that TRL built by repeating each prompt `group_size` times.

    Raises if the batch does not have that shape, rather than silently mis-assigning completions."""
    if group_size < 1 or len(prompts) % group_size:
        raise ValueError(f"{len(prompts)} prompts cannot be split into groups of {group_size}")
    firsts = prompts[::group_size]
    for g, first in enumerate(firsts):
        for p in prompts[g * group_size:(g + 1) * group_size]:
            if p is not first and _text_of(p) != _text_of(first):
                raise ValueError(f"prompt group {g} mixes different prompts; expected {group_size} repeats in a row")
    return firsts


def _text_of(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return repr([(m.get("role"), [p.get("text") for p in m["content"]] if isinstance(m.get("content"), list)
                  else m.get("content")) for m in prompt])


def version_lags(step: int, groups: list[list[Rollout]], max_staleness: int) -> list[int]:
    """How many optimizer steps behind the learner each rollout's weights are; raises past the bound."""
    lags = [step - r.version for g in groups for r in g]
    if lags and max(lags) > max_staleness:
        raise StaleRolloutError(f"a rollout is {max(lags)} policy versions behind the learner "
                                f"(rollout.max_staleness={max_staleness})")
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
    run and a retried shard draw exactly the samples an uninterrupted run draws."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


def sampling_from_trl(args: Any, group_size: int, step: int) -> SamplingParams:
    """One source of truth for sampling: TRL's GRPOConfig (plus the step's seed)."""
    return SamplingParams(n=group_size, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k or 0, max_tokens=args.max_completion_length,
                          seed=step_seed(args.seed, step))


def logprob_gap(model: Any, processor: Any, requests: list[RolloutRequest], groups: list[list[Rollout]],
                temperature: float, limit: int = 4) -> list[float]:
    """|engine logprob - learner logprob| per token, for up to `limit` rollouts (cheap: one forward each)."""
    from policies.hf_engine import completion_logprobs

    was_training = model.training
    model.eval()
    gaps: list[float] = []
    pairs = [(req, r) for req, g in zip(requests, groups) for r in g if r.completion_ids][:limit]
    for request, rollout in pairs:
        mine = completion_logprobs(model, processor, request, rollout.prompt_ids, rollout.completion_ids, temperature)
        gaps += [abs(a - b) for a, b in zip(mine, rollout.logprobs)]
    model.train(was_training)
    return gaps


def policy_state_dict(model: Any, on_cpu: bool = True) -> dict[str, Any]:
    """The policy's full weights as a rollout engine loads them, on the CPU (or where they are:
    `on_cpu=False`, for a broadcast from the learner's GPU).

    Full state dict: it includes tied copies (e.g. lm_head.weight), so engines with a separate
    output head (vLLM) do not keep a stale one. A PEFT (LoRA) policy is merged functionally: each
    adapted layer's base weight plus its adapter delta (PEFT's get_delta_weight), under the base
    model's key names; the training model is not touched (no merge/unmerge round trip in place).
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        LoraLayer = None  # noqa: N806 (no PEFT installed: no adapters to merge)
    deltas: dict[str, Any] = {}
    if LoraLayer is not None and getattr(model, "peft_config", None):
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter).detach()
                        deltas[name] = deltas[name] + delta if name in deltas else delta
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        value = value.detach()
        if key.endswith(".base_layer.weight") and key[: -len(".base_layer.weight")] in deltas:
            value = value + deltas[key[: -len(".base_layer.weight")]]
        state[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value.cpu() if on_cpu else value
    return state


def planned_prompts(trainer: Any, step: int) -> list[Any] | None:
    """The distinct prompts TRL will ask for at optimizer step `step` (None: cannot tell).

    Needs one generation per optimizer step (steps_per_generation = num_iterations = 1) and the
    trainer's EpochSeededRepeatSampler; prompts are built the way TRL builds them (images put into
    the messages)."""
    from trl.data_utils import prepare_multimodal_messages

    sampler, args = getattr(trainer, "train_sampler", None), trainer.args
    if sampler is None or args.steps_per_generation != 1 or args.num_iterations != 1:
        return None
    group = trainer.num_generations
    per_step = sampler.batch_size  # distinct prompts per generation batch
    steps_per_epoch = sampler.num_samples // per_step
    if steps_per_epoch == 0:
        return None
    epoch, k = divmod(step, steps_per_epoch)
    order = sampler.epoch_order(epoch)  # each index repeated `group` times in a row
    indices = order[k * per_step * group:(k + 1) * per_step * group:group]
    rows = [trainer.train_dataset[i] for i in indices]
    return [prepare_multimodal_messages(r["prompt"], images=r["images"]) if r.get("images") else r["prompt"]
            for r in rows]


@dataclass
class ActorRollouts:
    """A `rollout_func` that generates on a RolloutPool and keeps its weights in sync with the learner."""

    pool: Any  # RolloutPool (or anything with generate/load_weights/version)
    sync_every: int = 1
    max_staleness: int = 1
    logprob_gap_samples: int = 4
    overlap: bool = False
    # overlap: (step, distinct prompt texts, future of the groups) generated ahead for that step
    _ahead: tuple[int, list[str], Future] | None = field(default=None, repr=False)
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sync_every < 1:
            raise ValueError("rollout.sync_every must be >= 1")
        lag = self.sync_every - 1 + int(self.overlap)
        if self.max_staleness < lag:
            raise ValueError(f"rollout.max_staleness={self.max_staleness} is below the lag that "
                             f"rollout.sync_every={self.sync_every}{' with rollout.overlap' if self.overlap else ''} "
                             f"causes ({lag})")
        if self.overlap:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")

    def sync(self, model: Any, version: int) -> float:
        """Push the learner's weights to every actor; returns seconds taken."""
        start = time.perf_counter()
        broadcast = getattr(self.pool, "link", None) is not None  # straight from the learner's device
        self.pool.load_weights(policy_state_dict(model, on_cpu=not broadcast), version)
        return time.perf_counter() - start

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        step = trainer.state.global_step
        metrics = trainer._metrics["train"]  # TRL averages and logs these with its own metrics
        group_size = trainer.num_generations
        firsts = group_prompts(prompts, group_size)
        requests = [RolloutRequest(messages=p) for p in firsts]
        start = time.perf_counter()
        groups = self._take_ahead(step, firsts)  # with overlap: only the wait the learner sees
        if groups is None:
            self._maybe_sync(trainer, step, metrics)  # timed on its own (timing/weight_sync)
            start = time.perf_counter()
            groups = self.pool.generate(requests, sampling_from_trl(trainer.args, group_size, step))
        seconds = time.perf_counter() - start
        if self.overlap:
            self._maybe_sync(trainer, step, metrics)
            self._start_ahead(trainer, step + 1)
        lags = version_lags(step, groups, self.max_staleness)
        tokens = sum(len(r.completion_ids) for g in groups for r in g)
        # The mismatch between the engine's logprobs and the learner's for the same tokens (as TRL
        # reports for vLLM): engine numerics, plus staleness when weights are synced every k steps.
        gaps = logprob_gap(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, requests,
                           groups, trainer.args.temperature, self.logprob_gap_samples)
        if gaps:
            metrics["rollout/logprob_gap_mean"].append(sum(gaps) / len(gaps))
            metrics["rollout/logprob_gap_max"].append(max(gaps))
        metrics["timing/generate"].append(seconds)
        metrics["rollout/tokens_per_s"].append(tokens / seconds if seconds > 0 else 0.0)
        metrics["rollout/version_lag"].append(sum(lags) / len(lags))
        return to_trl_output(groups)

    def close(self) -> None:
        """Stop generating ahead (the run is over)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._ahead = None

    def _maybe_sync(self, trainer: Any, step: int, metrics: Any) -> None:
        if step - self.pool.version >= self.sync_every:
            metrics["timing/weight_sync"].append(self.sync(trainer.accelerator.unwrap_model(trainer.model), step))

    def _start_ahead(self, trainer: Any, step: int) -> None:
        """Generate step `step`'s rollouts in the background with the weights the actors hold now."""
        max_steps = getattr(trainer.state, "max_steps", 0)
        planned = planned_prompts(trainer, step) if step < max_steps else None
        if not planned:
            return
        requests = [RolloutRequest(messages=p) for p in planned]
        sampling = sampling_from_trl(trainer.args, trainer.num_generations, step)
        future = self._executor.submit(self.pool.generate, requests, sampling)
        self._ahead = (step, [_text_of(p) for p in planned], future)

    def _take_ahead(self, step: int, firsts: list[Any]) -> list[list[Rollout]] | None:
        if self._ahead is None:
            return None
        ahead_step, texts, future = self._ahead
        self._ahead = None
        groups = future.result()  # the actors' own timeouts and retries bound this wait
        if ahead_step == step and texts == [_text_of(p) for p in firsts]:
            return groups
        log.warning("rollouts generated ahead for step %d do not match step %d's prompts; generating now",
                    ahead_step, step)
        return None

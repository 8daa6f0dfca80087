"""Held-out evaluation of a policy: greedy answers scored by exact match, the rule matcher and
(optionally) a BaseReward scorer. Used by `brl eval-policy`, `brl compare` and the demo."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from policies.rollout_engine import RolloutRequest, SamplingParams
from reward.rule import RuleMatcher


@dataclass
class EvalResult:
    n: int
    exact_match: float  # completion.strip() == answer.strip(), character for character
    rule_match: float  # the rule matcher's normalised match
    mean_length: float  # completion tokens
    mean_model_score: float | None = None
    # Mean rule match of `k` sampled answers per row at the training temperature (pass@1 under
    # sampling, what GRPO optimises); None when not asked for.
    sampled_rule_match: float | None = None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few examples for reports


def summarize(answers: list[str], completions: list[str], lengths: list[int], tasks: list[str] | None = None,
              matcher: RuleMatcher | None = None, scores: list[float | None] | None = None) -> EvalResult:
    """Pure metric computation over aligned lists (unit-tested without any model)."""
    matcher = matcher or RuleMatcher()
    n = len(answers)
    exact = [float(c.strip() == a.strip()) for c, a in zip(completions, answers, strict=True)]
    rule = [float(matcher.match(c, a)) for c, a in zip(completions, answers, strict=True)]
    finite = [s for s in (scores or []) if s is not None and math.isfinite(s)]
    per_task: dict[str, dict[str, float]] = {}
    if tasks:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(tasks):
            groups[t].append(i)
        per_task = {t: {"n": len(ix), "exact_match": sum(exact[i] for i in ix) / len(ix),
                        "rule_match": sum(rule[i] for i in ix) / len(ix)} for t, ix in sorted(groups.items())}
    return EvalResult(
        n=n,
        exact_match=sum(exact) / n if n else 0.0,
        rule_match=sum(rule) / n if n else 0.0,
        mean_length=sum(lengths) / n if n else 0.0,
        mean_model_score=sum(finite) / len(finite) if finite else None,
        per_task=per_task,
        samples=[{"answer": a, "completion": c} for a, c in list(zip(answers, completions))[:8]],
    )


def evaluate_policy(engine: Any, dataset: Any, batch_size: int = 32, max_tokens: int = 16,
                    matcher: RuleMatcher | None = None, scorer: Callable | None = None,
                    samples: int = 0, temperature: float = 1.0, seed: int = 0) -> EvalResult:
    """Greedy-decode every row of `dataset` (RL rows) with `engine` and score the answers; with
    `samples` > 0 also sample that many answers per row and report their mean rule match."""
    matcher = matcher or RuleMatcher()
    # Only the answers are scored: no per-token log-probabilities are kept.
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, logprobs=False)
    sampled = SamplingParams(n=samples, temperature=temperature, max_tokens=max_tokens, seed=seed, logprobs=False)
    completions, lengths, scores, sampled_hits = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        requests = [RolloutRequest(p, imgs) for p, imgs in zip(rows["prompt"], rows["images"], strict=True)]
        outs = [group[0] for group in engine.generate(requests, greedy)]
        completions += [o.text for o in outs]
        lengths += [len(o.completion_ids) for o in outs]
        if scorer is not None:
            scores += scorer(rows["prompt"], [o.text for o in outs], images=rows["images"])
        if samples:
            for group, answer in zip(engine.generate(requests, sampled), rows["answer"], strict=True):
                sampled_hits += [float(matcher.match(o.text, answer)) for o in group]
    tasks = dataset["task"] if "task" in dataset.column_names else None
    result = summarize(list(dataset["answer"]), completions, lengths, tasks, matcher, scores if scorer else None)
    if samples:
        result.sampled_rule_match = sum(sampled_hits) / len(sampled_hits)
    return result


class HeldOutCallback(TrainerCallback):
    """Evaluate the live policy on held-out rows at the start and every `every` optimizer steps.

    Greedy decoding in-process on the learner's own model (no copy): the curve the compare
    report plots.
    """

    def __init__(self, dataset: Any, processor: Any, every: int, max_tokens: int = 16, batch_size: int = 64,
                 samples: int = 4, temperature: float = 1.0):
        self.dataset, self.processor, self.every = dataset, processor, max(1, every)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.samples, self.temperature = samples, temperature
        self.history: list[dict[str, float]] = []

    def _run(self, step: int, model: Any) -> None:
        from policies.hf_engine import HFEngine

        was_training = model.training
        engine = HFEngine(model, self.processor, device=str(next(model.parameters()).device))
        result = evaluate_policy(engine, self.dataset, self.batch_size, self.max_tokens, samples=self.samples,
                                 temperature=self.temperature)
        model.train(was_training)
        self.history.append({"step": step, "exact_match": result.exact_match, "rule_match": result.rule_match,
                             "sampled_rule_match": result.sampled_rule_match})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._run(state.global_step, model)

"""The paper's hybrid reward: 1 if the answer matches the ground truth, else sigmoid(model score).

R_hybrid(y) = 1                     if y matches the ground truth
            = sigmoid(BaseReward(y)) otherwise (including rows with no ground truth)

Only the completions the matcher did not accept are sent to the reward model, so a batch that the
rule settles costs no model forward at all. Weighted sums of several rewards need no class here:
they are several TRL reward functions with `reward_weights` (and TRL's
`multi_objective_aggregation` for normalise-then-sum), declared in the recipe's YAML.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reward.base import slice_columns
from reward.stats import mean_std


def sigmoid(x: float) -> float:
    # Numerically stable for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def hybrid_value(
    matched: float | None, score: float | None, squash: Callable[[float], float] | None = sigmoid
) -> float | None:
    """The hybrid formula for one sample (pure; see the module docstring). `squash` maps the model
    branch's score into [0, 1] (None: it is a probability already, as a generative judge's is)."""
    if matched == 1.0:
        return 1.0
    if score is None or not math.isfinite(score):
        return None if score is None else score  # a failed score stays a failure (NaN is counted by the guard)
    return squash(score) if squash is not None else score


def score_summary(scores: list[float]) -> dict[str, float]:
    """Mean, std and quantiles of raw model scores: the scalar view of their histogram."""
    if not scores:
        return {}
    s = sorted(scores)
    n = len(s)
    mean, std = mean_std(s)
    q = lambda p: s[min(n - 1, int(p * (n - 1) + 0.5))]  # noqa: E731 - nearest-rank quantile
    return {"mean": mean, "std": std, "p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "min": s[0], "max": s[-1]}


def prompt_groups(prompts: list[Any]) -> list[list[int]]:
    """Runs of consecutive samples of the same prompt (TRL passes each prompt's G completions in a row)."""
    groups: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if groups and (prompt is prompts[i - 1] or prompt == prompts[i - 1]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def decision_metrics(
    matched: list[float | None], rewards: list[float | None], prompts: list[Any], tasks: list[str] | None = None
) -> dict[str, float]:
    """Which branch decided each sample (overall and per task family), and how much the rewards of a group
    with no right answer spread (what GRPO's per-group standardisation turns into advantages: noise, if
    the model branch cannot tell its wrong answers apart). Pure."""
    n = len(matched)
    out = {
        "hybrid/decided_by_match": sum(m == 1.0 for m in matched) / n,
        "hybrid/decided_by_model": sum(m != 1.0 for m in matched) / n,
    }
    for task in sorted(set(tasks or [])):
        at = [i for i, t in enumerate(tasks) if t == task]
        out[f"hybrid/decided_by_match/{task}"] = sum(matched[i] == 1.0 for i in at) / len(at)
    spreads = []
    for group in prompt_groups(prompts):
        values = [rewards[i] for i in group if rewards[i] is not None and math.isfinite(rewards[i])]
        if len(group) > 1 and not any(matched[i] == 1.0 for i in group) and len(values) > 1:
            spreads.append(mean_std(values)[1])
    if spreads:
        out["hybrid/all_wrong_group_std"] = sum(spreads) / len(spreads)
    return out


@dataclass
class HybridReward:
    """`matcher` returns 1.0/0.0/None per sample; `scorer` returns raw scores, mapped into [0, 1] by
    `squash` (sigmoid for a reward model's; None for a judge's, which are probabilities)."""

    matcher: Callable[..., list[float | None]]
    scorer: Callable[..., list[float | None]]
    squash: Callable[[float], float] | None = sigmoid
    # Every raw score since a reader last drained it (the TensorBoard histogram callback does).
    score_log: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.__name__ = "hybrid"  # the name TRL logs this reward under

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        matched = self.matcher(prompts, completions, **columns)
        todo = [i for i, m in enumerate(matched) if m != 1.0]
        scores: list[float | None] = [None] * n
        if todo:
            got = self.scorer(
                [prompts[i] for i in todo], [completions[i] for i in todo], **slice_columns(columns, todo, n)
            )
            for i, s in zip(todo, got, strict=True):
                scores[i] = s
        out = [hybrid_value(m, s, self.squash) for m, s in zip(matched, scores, strict=True)]
        finite = [s for s in scores if s is not None and math.isfinite(s)]
        self.score_log.extend(finite)
        log_metric = columns.get("log_metric")
        if callable(log_metric) and n:
            for key, value in decision_metrics(matched, out, prompts, columns.get("task")).items():
                log_metric(key, value)
            for key, value in score_summary(finite).items():
                log_metric(f"hybrid/model_score_{key}", value)
        return out

    def metrics(self) -> dict[str, float]:
        """The model branch's own cost counters, when it keeps them (a generative judge does)."""
        metrics = getattr(self.scorer, "metrics", None)
        return metrics() if callable(metrics) else {}

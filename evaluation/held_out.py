"""Held-out evaluation of a policy, per task family like the paper's benchmark columns. Used by
`brl eval-policy`, `brl compare` and the demo.

Each row is scored by what its task can be judged by: a closed question (a row with an answer) by the
rule matcher's normalised match (exact match reported too); a description (the shapes task's open-ended
rows) by `describe_score` against the scene it shows (precision and recall of the objects named). Scores
are reported per task family and as their average (the paper's "Average": every family counts the
same), for greedy answers and for `samples` sampled answers per row at the training temperature (what
GRPO optimises).

Each family also reports whether the policy has collapsed onto few answers, which GRPO does when its reward
cannot tell answers apart (`answer_spread`): the share of greedy answers equal to the family's most frequent
one and the number of distinct answers, beside the same share among the rows' own answers (a balanced
colour question: about 1/4). `collapsed_tasks` says which families a run collapsed that its start did not.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from policies.rollout_engine import RolloutRequest, SamplingParams
from reward.rule import RuleMatcher, normalize

log = logging.getLogger("brl.evaluate")
OTHER = "all"  # the task family of rows without a `task` column
# A family has collapsed when the share of its most frequent greedy answer exceeds the share of the most
# frequent right answer by this much (a policy answering "blue" to 70% of colour questions whose answers
# are a quarter blue each): far beyond what held-out sampling noise moves (160 rows: a few points).
COLLAPSE_MARGIN = 0.25


@dataclass
class EvalResult:
    n: int
    score: float  # greedy answers: mean task score over the rows that can be scored
    exact_match: float  # closed questions only: completion.strip() == answer.strip()
    rule_match: float  # closed questions only: the rule matcher's normalised match
    mean_length: float  # completion tokens
    task_average: float  # mean over task families of their greedy score
    # family -> {n, greedy, sampled, pass_at_k, top_share, distinct, truth_top_share} (see summarize)
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    # The same for `samples` sampled answers per row (None when not asked for).
    sampled_score: float | None = None
    sampled_task_average: float | None = None
    mean_model_score: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few examples for reports


def row_score(completion: str, row: dict, matcher: RuleMatcher) -> float | None:
    """One answer's score on its row: the scene score for a description, the rule match for a closed
    question, None for a row neither can judge."""
    if row.get("task") == "description" and row.get("scene"):
        from rl.tasks.shapes import describe_score, scene_items

        return describe_score(completion, scene_items(row["scene"]))
    answer = row.get("answer")
    return None if answer is None or not str(answer).strip() else float(matcher.match(completion, str(answer)))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _truth(row: dict) -> str | None:
    """A row's right answer, or its reference response where it has no matchable answer (a description)."""
    return row.get("answer") if row.get("answer") is not None else row.get("reference")


def answer_spread(answers: list[str], truths: list[str | None]) -> dict[str, float]:
    """How spread out one family's answers are: `top_share`, the share of the most frequent (normalised)
    answer; `distinct`, how many different answers; `truth_top_share`, the same share among the rows' right
    answers (what a policy that answers right shows)."""
    counts = Counter(normalize(a) for a in answers)
    truth_counts = Counter(normalize(t) for t in truths if t is not None)
    return {
        "top_share": counts.most_common(1)[0][1] / len(answers) if answers else math.nan,
        "distinct": float(len(counts)),
        "truth_top_share": truth_counts.most_common(1)[0][1] / sum(truth_counts.values()) if truth_counts else math.nan,
    }


def is_collapsed(spread: dict[str, float], margin: float = COLLAPSE_MARGIN) -> bool:
    """A family whose most frequent answer is `margin` more common than its most common right answer."""
    return spread.get("top_share", math.nan) - spread.get("truth_top_share", math.nan) >= margin


def collapsed_tasks(
    start: dict[str, dict[str, float]], final: dict[str, dict[str, float]], margin: float = COLLAPSE_MARGIN
) -> list[str]:
    """The families (per_task entries) collapsed in `final` that were not in `start`."""
    return sorted(
        t for t, spread in final.items() if is_collapsed(spread, margin) and not is_collapsed(start.get(t, {}), margin)
    )


def summarize(
    rows: list[dict],
    completions: list[str],
    lengths: list[int],
    matcher: RuleMatcher | None = None,
    sampled: list[list[str]] | None = None,
    scores: list[float | None] | None = None,
) -> EvalResult:
    """Pure metric computation over aligned rows and answers (unit-tested without any model). `sampled`:
    each row's sampled answers."""
    matcher = matcher or RuleMatcher()
    greedy = [row_score(c, r, matcher) for c, r in zip(completions, rows, strict=True)]
    drawn = [[row_score(c, r, matcher) for c in cs] for cs, r in zip(sampled, rows, strict=True)] if sampled else None
    closed = [i for i, r in enumerate(rows) if r.get("answer") is not None and r.get("task") != "description"]
    families: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if greedy[i] is not None:
            families[r.get("task") or OTHER].append(i)
    per_task = {
        t: {
            "n": len(ix),
            "greedy": _mean([greedy[i] for i in ix]),
            # sampled: pass@1 estimated from k samples a row; pass_at_k: the best of a row's k (what
            # sampling finds at all: what GRPO can sharpen).
            **(
                {
                    "sampled": _mean([s for i in ix for s in drawn[i]]),
                    "pass_at_k": _mean([max(drawn[i]) for i in ix if drawn[i]]),
                }
                if drawn
                else {}
            ),
            **answer_spread([completions[i] for i in ix], [_truth(rows[i]) for i in ix]),
        }
        for t, ix in sorted(families.items())
    }
    finite = [s for s in (scores or []) if s is not None and math.isfinite(s)]
    scored = [g for g in greedy if g is not None]
    return EvalResult(
        n=len(rows),
        score=_mean(scored),
        exact_match=_mean([float(completions[i].strip() == str(rows[i]["answer"]).strip()) for i in closed]),
        rule_match=_mean([greedy[i] for i in closed]),
        mean_length=_mean([float(x) for x in lengths]),
        task_average=_mean([t["greedy"] for t in per_task.values()]),
        per_task=per_task,
        sampled_score=_mean([s for ss in drawn for s in ss if s is not None]) if drawn else None,
        sampled_task_average=_mean([t["sampled"] for t in per_task.values()]) if drawn else None,
        mean_model_score=_mean(finite) if finite else None,
        samples=[
            {"task": r.get("task"), "reference": r.get("reference") or r.get("answer"), "completion": c}
            for r, c in list(zip(rows, completions))[:8]
        ],
    )


def evaluate_policy(
    engine: Any,
    dataset: Any,
    batch_size: int = 32,
    max_tokens: int = 16,
    matcher: RuleMatcher | None = None,
    scorer: Callable | None = None,
    samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> EvalResult:
    """Greedy-decode every row of `dataset` (RL rows) with `engine` and score the answers; with
    `samples` > 0 also sample that many answers per row and score those."""
    # Only the answers are scored: no per-token log-probabilities are kept.
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, logprobs=False)
    drawn = SamplingParams(n=samples, temperature=temperature, max_tokens=max_tokens, seed=seed, logprobs=False)
    completions, lengths, scores, sampled = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        requests = [RolloutRequest(p, imgs) for p, imgs in zip(rows["prompt"], rows["images"], strict=True)]
        outs = [group[0] for group in engine.generate(requests, greedy)]
        completions += [o.text for o in outs]
        lengths += [len(o.completion_ids) for o in outs]
        if scorer is not None:
            scores += scorer(rows["prompt"], [o.text for o in outs], images=rows["images"])
        if samples:
            sampled += [[o.text for o in group] for group in engine.generate(requests, drawn)]
    columns = [c for c in ("answer", "reference", "task", "scene") if c in dataset.column_names]
    rows = (
        [dict(zip(columns, values)) for values in zip(*(dataset[c] for c in columns))]
        if columns
        else [{} for _ in range(len(dataset))]
    )
    return summarize(rows, completions, lengths, matcher, sampled or None, scores if scorer else None)


class HeldOutCallback(TrainerCallback):
    """Evaluate the live policy on held-out rows at the start (unless `start` gives that evaluation
    already) and every `every` optimizer steps, logging each family's score and answer spread, and warning
    when a family collapses that had not at the start.

    Decoding in-process on the learner's own model (no copy): the curve the compare report plots."""

    def __init__(
        self,
        dataset: Any,
        processor: Any,
        every: int,
        max_tokens: int = 16,
        batch_size: int = 64,
        samples: int = 4,
        temperature: float = 1.0,
        start: dict[str, Any] | None = None,
    ):
        self.dataset, self.processor, self.every = dataset, processor, max(1, every)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.samples, self.temperature = samples, temperature
        self.history: list[dict[str, Any]] = [start] if start is not None else []

    def _run(self, step: int, model: Any) -> None:
        from policies.hf_engine import HFEngine

        was_training = model.training
        engine = HFEngine(model, self.processor, device=str(next(model.parameters()).device))
        result = evaluate_policy(
            engine, self.dataset, self.batch_size, self.max_tokens, samples=self.samples, temperature=self.temperature
        )
        model.train(was_training)
        self.history.append(history_entry(step, result))
        log.info(
            "held-out at step %d: %s",
            step,
            ", ".join(f"{t} {s['greedy']:.2f} (top answer {s['top_share']:.0%})" for t, s in result.per_task.items()),
        )
        if len(self.history) > 1 and (new := collapsed_tasks(self.history[0]["per_task"], result.per_task)):
            log.warning(
                "step %d: the policy collapsed onto few answers on %s (share of the most frequent "
                "greedy answer: %s); its reward may not tell these answers apart",
                step,
                ", ".join(new),
                ", ".join(f"{result.per_task[t]['top_share']:.0%}" for t in new),
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history:
            self._run(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._run(state.global_step, model)


def history_entry(step: int, result: EvalResult) -> dict[str, Any]:
    """One point of a held-out curve (what compare's JSON, table and plot read)."""
    return {
        "step": step,
        "score": result.score,
        "task_average": result.task_average,
        "sampled_score": result.sampled_score,
        "sampled_task_average": result.sampled_task_average,
        "exact_match": result.exact_match,
        "rule_match": result.rule_match,
        "per_task": result.per_task,
    }

"""Reward-model benchmark metrics in their published forms: MM-RLHF-RewardBench, VL-RewardBench, pairs.

Metric code is pure (rows + scores -> numbers) and tested on hand-made fixtures; scoring is pluggable
and always by pairs (`PairScorer`: both responses of each pair at once, which a generative judge needs;
a scalar reward model scores each response alone, `scalar_pairs`): a reward-model checkpoint of any
layout (`reward_model_pairs`), or the model-free baselines `length` (longer response wins) and `random`
(a seeded coin) that sanity-check the metric code. A pair is correct only when the better response
scores strictly higher: ties and NaN are wrong. Reading benchmark files is evaluation/rm_benchmarks.py.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

MM_RLHF_CATEGORIES = ("mcq", "long", "short", "safety", "video")
VL_REWARD_GROUPS = ("general", "hallucination", "reasoning")
# VL-RewardBench sources -> its three groups (the benchmark paper's grouping), matched in the row id.
VL_REWARD_SOURCES = {
    "wildvision": "general",
    "vlfeedback": "general",
    "povid": "hallucination",
    "rlaif": "hallucination",
    "rlhf-v": "hallucination",
    "rlhfv": "hallucination",
    "mmmu": "reasoning",
    "mathverse": "reasoning",
}

Scorer = Callable[[list[dict]], list[float]]  # items {prompt, images, response} -> scores
# Two lists of items, pair k = (first[k], second[k]) of one prompt -> (scores of the firsts, of the seconds)
PairScorer = Callable[[list[dict], list[dict]], tuple[list[float], list[float]]]


def _correct(better: float, worse: float) -> bool:
    return better > worse  # False for ties and for NaN on either side


def mm_rlhf_category(row: dict) -> str:
    """The first of mcq/long/short/safety/video found in the row's image (or video) path."""
    path = str(row.get("image") or row.get("video") or "").lower()
    return next((c for c in MM_RLHF_CATEGORIES if c in path), "other")


def mm_rlhf_metrics(rows: list[dict], chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    """Acc = correct pairs / pairs; Acc+ = ids whose every pair is correct / unique ids."""
    ok = [_correct(c, r) for c, r in zip(chosen, rejected, strict=True)]
    by_id: dict[Any, list[bool]] = defaultdict(list)
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for row, good in zip(rows, ok, strict=True):
        by_id[row["id"]].append(good)
        by_cat[mm_rlhf_category(row)].append(good)
    return {
        "pairs": len(ok),
        "ids": len(by_id),
        "acc": sum(ok) / len(ok) if ok else math.nan,
        "acc_plus": sum(all(v) for v in by_id.values()) / len(by_id) if by_id else math.nan,
        "per_category": {c: {"pairs": len(v), "acc": sum(v) / len(v)} for c, v in sorted(by_cat.items())},
    }


def vl_reward_group(row: dict) -> str:
    if row.get("category"):
        return str(row["category"]).lower()
    rid = str(row.get("id", "")).lower()
    return next((g for src, g in VL_REWARD_SOURCES.items() if src in rid), "other")


def vl_reward_metrics(rows: list[dict], scores: list[list[float]]) -> dict[str, Any]:
    """Overall accuracy and the macro average over general / hallucination / reasoning.

    `human_ranking` ranks the two responses (lower is better): the pair is correct when the
    better-ranked response scores strictly higher."""
    by_group: dict[str, list[bool]] = defaultdict(list)
    ok = []
    for row, (s0, s1) in zip(rows, scores, strict=True):
        r0, r1 = row["human_ranking"][:2]
        if r0 == r1:
            raise ValueError(f"row {row.get('id')}: human_ranking {row['human_ranking']} has no preferred response")
        good = _correct(s0, s1) if r0 < r1 else _correct(s1, s0)
        ok.append(good)
        by_group[vl_reward_group(row)].append(good)
    group_acc = {g: sum(v) / len(v) for g, v in by_group.items()}
    present = [g for g in VL_REWARD_GROUPS if g in group_acc]
    return {
        "pairs": len(ok),
        "overall_acc": sum(ok) / len(ok) if ok else math.nan,
        "macro_avg": sum(group_acc[g] for g in present) / len(present) if present else math.nan,
        "per_group": {g: {"pairs": len(by_group[g]), "acc": group_acc[g]} for g in sorted(group_acc)},
    }


MMRB_CATEGORIES = {  # Multimodal RewardBench's categories (its `Category`) -> the names its paper reports
    "open_generation/correctness_task": "general correctness",
    "open_generation/preference_task": "general preference",
    "knowledge": "knowledge",
    "reasoning": "reasoning",
    "safety": "safety",
    "vqa": "vqa",
}


def multimodal_rewardbench_category(row: dict) -> str:
    """The category of a Multimodal RewardBench row, with its two sub-splits as its accuracy script
    makes them: safety by ID (`pairs*`: bias, else toxicity), reasoning by ID (`math*`: math, else coding)."""
    raw = row.get("Category") or (row.get("Meta") or {}).get("Category") or "other"
    category = MMRB_CATEGORIES.get(raw, raw)
    rid = str(row.get("ID", "")).lower()
    if category == "safety":
        return "safety/bias" if rid.startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if rid.startswith("math") else "reasoning/coding"
    return category


def multimodal_rewardbench_metrics(rows: list[dict], scores: list[list[float]]) -> dict[str, Any]:
    """Overall accuracy (every pair) and per category with the safety and reasoning sub-splits, plus the
    six categories' mean. `Better` names the better of Output1 / Output2."""
    by_cat: dict[str, list[bool]] = defaultdict(list)
    ok = []
    for row, (s1, s2) in zip(rows, scores, strict=True):
        if row["Better"] not in ("Output1", "Output2"):
            raise ValueError(f"row {row.get('ID')}: Better={row['Better']!r} is neither Output1 nor Output2")
        good = _correct(s1, s2) if row["Better"] == "Output1" else _correct(s2, s1)
        ok.append(good)
        by_cat[multimodal_rewardbench_category(row)].append(good)
    per = {c: {"pairs": len(v), "acc": sum(v) / len(v)} for c, v in sorted(by_cat.items())}
    top: dict[str, list[bool]] = defaultdict(list)
    for c, v in by_cat.items():
        top[c.split("/")[0]] += v
    return {
        "pairs": len(ok),
        "overall_acc": sum(ok) / len(ok) if ok else math.nan,
        "category_mean": sum(sum(v) / len(v) for v in top.values()) / len(top) if top else math.nan,
        "per_category": per,
    }


# RewardBench (text): its official section scores weight each subset by these example counts
# (math-prm is upweighted to equal the code subsets together), and the score is the sections' mean.
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def rewardbench_metrics(rows: list[dict], chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    """Per-subset accuracy, section scores weighted like the official ones, and their mean."""
    by_subset: dict[str, list[bool]] = defaultdict(list)
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        by_subset[row["subset"]].append(_correct(c, r))
    subset_acc = {k: sum(v) / len(v) for k, v in by_subset.items()}
    sections = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in subset_acc]
        if present:
            total = sum(REWARDBENCH_EXAMPLE_COUNTS[s] for s in present)
            sections[section] = sum(subset_acc[s] * REWARDBENCH_EXAMPLE_COUNTS[s] for s in present) / total
    unknown = sorted(set(subset_acc) - set(REWARDBENCH_EXAMPLE_COUNTS))
    return {
        "pairs": sum(len(v) for v in by_subset.values()),
        "score": sum(sections.values()) / len(sections) if sections else math.nan,
        "sections": sections,
        "per_subset": {k: {"pairs": len(by_subset[k]), "acc": v} for k, v in sorted(subset_acc.items())},
        "subsets_not_in_a_section": unknown,
    }


def pairs_metrics(chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    ok = [_correct(c, r) for c, r in zip(chosen, rejected, strict=True)]
    return {"pairs": len(ok), "acc": sum(ok) / len(ok) if ok else math.nan}


# ---------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------


def length_scorer(items: list[dict]) -> list[float]:
    return [float(len(it["response"])) for it in items]


def random_scorer(seed: int = 0) -> Scorer:
    """A coin that is the same for the same (prompt, response) whatever the batch or order."""

    def score(items: list[dict]) -> list[float]:
        out = []
        for it in items:
            key = f"{seed}|{it.get('prompt_text', '')}|{it['response']}".encode()
            out.append(int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64)
        return out

    return score


def scalar_pairs(scorer: Scorer) -> PairScorer:
    """Pairs scored by a scalar scorer: each response on its own."""
    return lambda first, second: (scorer(first), scorer(second))


def judge_pairs(judge: Any) -> PairScorer:
    """Pairs scored by a generative judge (reward.judge.GenerativeJudge): the first response judged against
    the second, in both orders; its score is P(first is better), the second's its complement."""

    def score(first: list[dict], second: list[dict]) -> tuple[list[float], list[float]]:
        references = {judge.options.reference_column: [it["response"] for it in second]}
        p = judge(
            [it["prompt"] for it in first],
            [it["response"] for it in first],
            images=[it["images"] for it in first],
            **references,
        )
        return p, [1.0 - x for x in p]  # NaN (an unreadable verdict) stays NaN: the pair counts as wrong

    return score


def reward_model_pairs(
    paths: list[str], device: str = "cpu", batch_size: int = 16
) -> tuple[PairScorer, Callable[[], dict[str, float]] | None]:
    """A pair scorer for reward-model checkpoints, whatever their layout (reward/layouts.py): scalar models
    (several are averaged, the paper's ensemble) or one generative judge; and, for a judge, its cost
    counters (tokens generated)."""
    from reward.layouts import layout_of

    layouts = [layout_of(p) for p in paths]
    if "generative" in layouts:
        if len(paths) > 1:
            raise ValueError(f"{paths}: a generative judge is evaluated alone (no ensembles with judges)")
        from reward.judge import GenerativeJudge
        from reward.options import JudgeOptions

        judge = GenerativeJudge(JudgeOptions(path=paths[0], device=device, batch_size=batch_size))
        return judge_pairs(judge), judge.metrics
    return scalar_pairs(model_scorer(paths, device, batch_size)), None


def model_scorer(paths: list[str], device: str = "cpu", batch_size: int = 16) -> Scorer:
    """Scalar reward models' scores of single responses (several checkpoints averaged)."""
    from reward.scorer import RewardModelScorer

    scorer = RewardModelScorer.from_paths(paths, device=device, batch_size=batch_size)

    def score(items: list[dict]) -> list[float]:
        raw = scorer(
            [it["prompt"] for it in items], [it["response"] for it in items], images=[it["images"] for it in items]
        )
        return [math.nan if s is None else s for s in raw]

    return score

"""Reward-model benchmarks in their published formats: MM-RLHF-RewardBench, VL-RewardBench, pairs.

Metric code is pure (rows + scores -> numbers) and tested on hand-made fixtures; scoring is pluggable:
a BaseReward checkpoint, or the model-free baselines `length` (longer response wins) and `random`
(a seeded coin) that sanity-check the metric code. A pair is correct only when the better response
scores strictly higher: ties and NaN are wrong.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

MM_RLHF_CATEGORIES = ("mcq", "long", "short", "safety", "video")
VL_REWARD_GROUPS = ("general", "hallucination", "reasoning")
# VL-RewardBench sources -> its three groups (the benchmark paper's grouping), matched in the row id.
VL_REWARD_SOURCES = {
    "wildvision": "general", "vlfeedback": "general",
    "povid": "hallucination", "rlaif": "hallucination", "rlhf-v": "hallucination", "rlhfv": "hallucination",
    "mmmu": "reasoning", "mathverse": "reasoning",
}

Scorer = Callable[[list[dict]], list[float]]  # items {prompt, images, response} -> scores


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


def model_scorer(paths: list[str], device: str = "cpu", batch_size: int = 16) -> Scorer:
    from reward.scorer import BaseRewardScorer

    scorer = BaseRewardScorer.from_paths(paths, device=device, batch_size=batch_size)

    def score(items: list[dict]) -> list[float]:
        raw = scorer([it["prompt"] for it in items], [it["response"] for it in items],
                     images=[it["images"] for it in items])
        return [math.nan if s is None else s for s in raw]

    return score


# ---------------------------------------------------------------------------------------------
# Reading benchmark files and running
# ---------------------------------------------------------------------------------------------


def _open_image(ref: Any, base: Path) -> Any:
    from PIL import Image

    if ref is None or ref == "":
        return None
    if hasattr(ref, "convert"):
        return ref
    p = Path(ref)
    p = p if p.is_absolute() else base / p
    return Image.open(p).convert("RGB")


def _item(prompt_text: str, image: Any, response: str) -> dict:
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt_text}]
    return {"prompt": [{"role": "user", "content": content}], "images": [image] if image is not None else [],
            "response": response, "prompt_text": prompt_text}


def evaluate_file(path: str, fmt: str, scorer: Scorer, needs_images: bool = True) -> dict[str, Any]:
    """Score every row of a benchmark file and compute its metrics."""
    from rl.data import RowError, iter_rows

    base = Path(path).parent
    rows = []
    for rownum, row in iter_rows(path, "test"):
        if isinstance(row, RowError):
            raise ValueError(f"{path}: {row}")
        rows.append(row)
    video_without_frames = 0

    def image_of(row: dict) -> Any:
        nonlocal video_without_frames
        if row.get("video") and not row.get("image"):
            video_without_frames += 1  # scored on the text alone: frame sampling is not implemented
            return None
        return _open_image(row.get("image"), base) if needs_images else None

    if fmt == "mm-rlhf":
        items_c, items_r = [], []
        for row in rows:
            img = image_of(row)
            items_c.append(_item(row["prompt"], img, row["chosen"]))
            items_r.append(_item(row["prompt"], img, row["rejected"]))
        result = mm_rlhf_metrics(rows, scorer(items_c), scorer(items_r))
    elif fmt == "vl-reward":
        items = []
        for row in rows:
            img = image_of(row)
            items += [_item(row["query"], img, r) for r in row["response"][:2]]
        flat = scorer(items)
        result = vl_reward_metrics(rows, [flat[i:i + 2] for i in range(0, len(flat), 2)])
    elif fmt == "pairs":
        items_c, items_r = [], []
        for row in rows:
            imgs = [_open_image(i, base) for i in (row.get("images") or [])] if needs_images else []
            text = row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"])
            c, r = _item(text, None, row["chosen"]), _item(text, None, row["rejected"])
            if imgs:
                for it in (c, r):
                    it["images"] = imgs
                    it["prompt"][0]["content"] = [{"type": "image"}] * len(imgs) + it["prompt"][0]["content"]
            items_c.append(c)
            items_r.append(r)
        result = pairs_metrics(scorer(items_c), scorer(items_r))
    else:
        raise ValueError(f"unknown benchmark format {fmt!r}; use mm-rlhf, vl-reward or pairs")
    result["video_rows_scored_without_frames"] = video_without_frames
    return result

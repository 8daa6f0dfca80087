"""Run a reward-model benchmark in its published form: read its rows (a file or the hub dataset),
score both responses of each pair, compute its metrics (the metric code is evaluation/rm_metrics.py). Used by
`brl eval-rm --format NAME --data PATH_OR_HUB_ID`.

| format | published schema | metrics |
|---|---|---|
| vl-reward | VL-RewardBench: id, query, response (2), image (embedded), human_ranking | overall, macro over general / hallucination / reasoning (group from the id's prefix) |
| mm-rlhf | MM-RLHF-RewardBench: id, prompt, image or video (path), chosen, rejected | Acc, Acc+ (every pair of an id right) |
| multimodal-rewardbench | Multimodal RewardBench: ID, Text, Image (path), Output1, Output2, Better, Category | overall, per category with safety/reasoning sub-splits |
| rewardbench | RewardBench (text): prompt, chosen, rejected, subset | section scores weighted like the official ones, their mean |
| pairs | this project's preference rows: prompt, images, chosen, rejected | accuracy |
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluation.rm_metrics import (
    PairScorer,
    mm_rlhf_metrics,
    multimodal_rewardbench_metrics,
    pairs_metrics,
    rewardbench_metrics,
    vl_reward_metrics,
)
from rl.data.read import RowError, iter_rows

FORMATS = ("vl-reward", "mm-rlhf", "multimodal-rewardbench", "rewardbench", "pairs")


def _open_image(ref: Any, base: Path) -> Any:
    """A benchmark's image: embedded ({"bytes": ...}, a PIL image) or a path relative to `base`."""
    from PIL import Image

    if ref is None or ref == "":
        return None
    if hasattr(ref, "convert"):
        return ref.convert("RGB")
    if isinstance(ref, dict) and ref.get("bytes"):
        return Image.open(io.BytesIO(ref["bytes"])).convert("RGB")
    p = Path(ref["path"] if isinstance(ref, dict) else ref)
    p = p if p.is_absolute() else base / p
    return Image.open(p).convert("RGB")


def _item(prompt_text: str, images: list[Any], response: str) -> dict:
    """One (prompt, response) to score; the scorer puts the images' placeholders before the text."""
    return {
        "prompt": [{"role": "user", "content": prompt_text}],
        "images": images,
        "response": response,
        "prompt_text": prompt_text,
    }


def evaluate_file(
    data: str,
    fmt: str,
    pairs: PairScorer,
    needs_images: bool = True,
    split: str = "test",
    image_root: str | None = None,
    costs: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Score every pair of a benchmark (a file, or a hub dataset name and its split) and compute its metrics.
    Beside them: seconds per pair, and from `costs` (a judge's counters) its tokens and verdicts per pair, the
    share of its verdicts that pick the first response and its position consistency (reward.judge.judge_report)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; use one of {', '.join(FORMATS)}")
    base = Path(image_root) if image_root else Path(data).parent
    rows = []
    for _, row in iter_rows(data, split):
        if isinstance(row, RowError):
            raise ValueError(f"{data}: {row}")
        rows.append(row)
    video_without_frames = 0

    def images_of(row: dict, key: str = "image") -> list[Any]:
        nonlocal video_without_frames
        if row.get("video") and not row.get(key):
            video_without_frames += 1  # scored on the text alone: frame sampling is not implemented
            return []
        if fmt == "pairs":
            return [_open_image(i, base) for i in (row.get("images") or [])] if needs_images else []
        image = _open_image(row.get(key), base) if needs_images else None
        return [image] if image is not None else []

    # Each format's prompt, its two responses (the order its metric reads them in) and its images.
    prompt_key, first_key, second_key, image_key = {
        "mm-rlhf": ("prompt", "chosen", "rejected", "image"),
        "rewardbench": ("prompt", "chosen", "rejected", None),
        "pairs": ("prompt", "chosen", "rejected", "images"),
        "multimodal-rewardbench": ("Text", "Output1", "Output2", "Image"),
        "vl-reward": ("query", None, None, "image"),
    }[fmt]
    first, second = [], []
    for row in rows:
        images = images_of(row, image_key) if image_key else []
        prompt = row[prompt_key] if isinstance(row[prompt_key], str) else str(row[prompt_key])
        one, two = row["response"][:2] if fmt == "vl-reward" else (row[first_key], row[second_key])
        first.append(_item(prompt, images, one))
        second.append(_item(prompt, images, two))
    if costs is not None:
        costs()  # start the counters from here
    start = time.perf_counter()
    a, b = pairs(first, second) if rows else ([], [])
    seconds = time.perf_counter() - start
    if fmt == "mm-rlhf":
        result = mm_rlhf_metrics(rows, a, b)
    elif fmt == "vl-reward":
        result = vl_reward_metrics(rows, [list(p) for p in zip(a, b)])
    elif fmt == "multimodal-rewardbench":
        result = multimodal_rewardbench_metrics(rows, [list(p) for p in zip(a, b)])
    elif fmt == "rewardbench":
        result = rewardbench_metrics(rows, a, b)
    else:
        result = pairs_metrics(a, b)
    result["video_rows_scored_without_frames"] = video_without_frames
    result["seconds_per_pair"] = seconds / len(rows) if rows else math.nan
    if costs is not None:  # a judge's counters: its cost per pair, and how the order of the responses sways it
        from reward.judge import judge_report

        result.update(judge_report(costs(), len(rows)))
    return result

"""Run a reward-model benchmark in its published form: read its rows (a file or the hub dataset),
score both responses of each pair, compute its metrics (the metric code is reward/bench.py). Used by
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
from pathlib import Path
from typing import Any

from reward.bench import (Scorer, mm_rlhf_metrics, multimodal_rewardbench_metrics, pairs_metrics,
                          rewardbench_metrics, vl_reward_metrics)
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
    return {"prompt": [{"role": "user", "content": prompt_text}], "images": images, "response": response,
            "prompt_text": prompt_text}


def _pairs(rows: list[dict], prompt: str, first: str, second: str, images_of: Any) -> tuple[list, list]:
    a, b = [], []
    for row in rows:
        imgs = images_of(row)
        a.append(_item(row[prompt], imgs, row[first]))
        b.append(_item(row[prompt], imgs, row[second]))
    return a, b


def evaluate_file(data: str, fmt: str, scorer: Scorer, needs_images: bool = True, split: str = "test",
                  image_root: str | None = None) -> dict[str, Any]:
    """Score every row of a benchmark (a file, or a hub dataset name and its split) and compute its metrics."""
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
        image = _open_image(row.get(key), base) if needs_images else None
        return [image] if image is not None else []

    if fmt == "mm-rlhf":
        chosen, rejected = _pairs(rows, "prompt", "chosen", "rejected", images_of)
        result = mm_rlhf_metrics(rows, scorer(chosen), scorer(rejected))
    elif fmt == "vl-reward":
        items = []
        for row in rows:
            imgs = images_of(row)
            items += [_item(row["query"], imgs, response) for response in row["response"][:2]]
        flat = scorer(items)
        result = vl_reward_metrics(rows, [flat[i:i + 2] for i in range(0, len(flat), 2)])
    elif fmt == "multimodal-rewardbench":
        one, two = _pairs(rows, "Text", "Output1", "Output2", lambda row: images_of(row, "Image"))
        result = multimodal_rewardbench_metrics(rows, [list(p) for p in zip(scorer(one), scorer(two))])
    elif fmt == "rewardbench":
        chosen, rejected = _pairs(rows, "prompt", "chosen", "rejected", lambda row: [])
        result = rewardbench_metrics(rows, scorer(chosen), scorer(rejected))
    else:  # pairs
        def pair_images(row: dict) -> list[Any]:
            return [_open_image(i, base) for i in (row.get("images") or [])] if needs_images else []

        for row in rows:
            row["prompt"] = row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"])
        chosen, rejected = _pairs(rows, "prompt", "chosen", "rejected", pair_images)
        result = pairs_metrics(scorer(chosen), scorer(rejected))
    result["video_rows_scored_without_frames"] = video_without_frames
    return result

"""Run a reward-model benchmark file: read its rows, score both responses, compute its metrics
(the metric code is reward/bench.py). Used by `brl eval-rm`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reward.bench import Scorer, mm_rlhf_metrics, pairs_metrics, vl_reward_metrics
from rl.data import RowError, iter_rows

FORMATS = ("mm-rlhf", "vl-reward", "pairs")


def _open_image(ref: Any, base: Path) -> Any:
    from PIL import Image

    if ref is None or ref == "":
        return None
    if hasattr(ref, "convert"):
        return ref
    p = Path(ref)
    p = p if p.is_absolute() else base / p
    return Image.open(p).convert("RGB")


def _item(prompt_text: str, images: list[Any], response: str) -> dict:
    """One (prompt, response) to score; the scorer puts the images' placeholders before the text."""
    return {"prompt": [{"role": "user", "content": prompt_text}], "images": images, "response": response,
            "prompt_text": prompt_text}


def evaluate_file(path: str, fmt: str, scorer: Scorer, needs_images: bool = True) -> dict[str, Any]:
    """Score every row of a benchmark file and compute its metrics."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; use one of {', '.join(FORMATS)}")
    base = Path(path).parent
    rows = []
    for _, row in iter_rows(path, "test"):
        if isinstance(row, RowError):
            raise ValueError(f"{path}: {row}")
        rows.append(row)
    video_without_frames = 0

    def images_of(row: dict) -> list[Any]:
        nonlocal video_without_frames
        if row.get("video") and not row.get("image"):
            video_without_frames += 1  # scored on the text alone: frame sampling is not implemented
            return []
        image = _open_image(row.get("image"), base) if needs_images else None
        return [image] if image is not None else []

    if fmt == "mm-rlhf":
        items_c, items_r = [], []
        for row in rows:
            imgs = images_of(row)
            items_c.append(_item(row["prompt"], imgs, row["chosen"]))
            items_r.append(_item(row["prompt"], imgs, row["rejected"]))
        result = mm_rlhf_metrics(rows, scorer(items_c), scorer(items_r))
    elif fmt == "vl-reward":
        items = []
        for row in rows:
            imgs = images_of(row)
            items += [_item(row["query"], imgs, r) for r in row["response"][:2]]
        flat = scorer(items)
        result = vl_reward_metrics(rows, [flat[i:i + 2] for i in range(0, len(flat), 2)])
    else:  # pairs
        items_c, items_r = [], []
        for row in rows:
            imgs = [_open_image(i, base) for i in (row.get("images") or [])] if needs_images else []
            text = row["prompt"] if isinstance(row["prompt"], str) else str(row["prompt"])
            items_c.append(_item(text, imgs, row["chosen"]))
            items_r.append(_item(text, imgs, row["rejected"]))
        result = pairs_metrics(scorer(items_c), scorer(items_r))
    result["video_rows_scored_without_frames"] = video_without_frames
    return result

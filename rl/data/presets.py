"""Published datasets by name: a preset is a few lines of mapping (where each of the project's fields
is in the published schema, the hub id, the split), plus a row transform for the two sets whose pairs
are not stored as (chosen, rejected): R1-Reward and SHP. Chosen in a source entry: `preset: rlaif-v`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    hub_id: str
    kind: str  # "rl" | "preference"
    columns: dict[str, str] = field(default_factory=dict)  # project field -> the dataset's column
    split: str = "train"
    transform: Callable[[dict], dict] | None = None  # raw row -> row with (some of) the project's fields
    needs: str = ""  # what a user must provide beyond the hub id (shown in errors and the README)
    local_only: bool = False  # published as files to download (its `source` is the local copy), not a hub dataset
    summary: str = ""


def _response_index(answer: Any) -> int:
    """R1-Reward's label: `["<answer>2</answer>"]` (or the bare string): which response is better."""
    text = " ".join(answer) if isinstance(answer, list) else str(answer)
    found = re.search(r"<answer>\s*([12])\s*</answer>", text) or re.fullmatch(r"\s*([12])\s*", text)
    if not found:
        raise ValueError(
            f"answer {text[:60]!r} does not name response 1 or 2 (<answer>1</answer> / <answer>2</answer>)"
        )
    return int(found.group(1))


_R1_SECTIONS = re.compile(
    r"\[Question\]:?\s*(?P<question>.*?)\s*(?:#+\s*)?\[Response 1\]:?\s*(?P<one>.*?)\s*"
    r"(?:#+\s*)?\[Response 2\]:?\s*(?P<two>.*?)\s*(?:#+\s*\[[^\]]*\].*)?$",
    re.DOTALL,
)


def r1_reward_pair(row: dict) -> dict:
    """R1-Reward's RL set holds the question and both responses in one user turn (`message`, a chat or
    its JSON text, with [Question], [Response 1] and [Response 2] sections) and the preferred index in
    `answer`: turned into a (prompt, chosen, rejected) pair, the images kept."""
    message = row["message"]
    if isinstance(message, str) and message.lstrip().startswith("["):
        message = json.loads(message)
    turns = message if isinstance(message, list) else [{"role": "user", "content": message}]
    user = next((m for m in turns if m.get("role") == "user"), None)
    if user is None:
        raise ValueError("message has no user turn")
    content = user["content"]
    text = (
        content
        if isinstance(content, str)
        else "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    )
    images = (
        [p.get("image") for p in content if isinstance(p, dict) and p.get("type") == "image"]
        if isinstance(content, list)
        else []
    )
    found = _R1_SECTIONS.search(text)
    if not found:
        raise ValueError("message has no [Question] / [Response 1] / [Response 2] sections")
    responses = (found.group("one"), found.group("two"))
    better = _response_index(row["answer"])
    return {
        "prompt": found.group("question"),
        "images": row.get("image") or row.get("images") or images or [],
        "chosen": responses[better - 1],
        "rejected": responses[2 - better],
    }


def shp_pair(row: dict) -> dict:
    """SHP: a post (`history`) and two comments; `labels` is 1 when A is preferred, 0 when B is."""
    a_wins = int(row["labels"]) == 1
    return {
        "prompt": row["history"],
        "chosen": row["human_ref_A" if a_wins else "human_ref_B"],
        "rejected": row["human_ref_B" if a_wins else "human_ref_A"],
        "domain": row.get("domain"),
    }


def answer_in_tags(row: dict) -> dict:
    """multimodal-open-r1: the ground truth (`solution`) comes wrapped as `<answer> 5 </answer>`."""
    from reward.rule import extract_answer

    solution = row.get("solution")
    return {
        "answer": (extract_answer(solution, "answer_tag") or solution).strip()
        if isinstance(solution, str)
        else solution
    }


PRESETS: dict[str, Preset] = {
    # multimodal preference pairs
    "rlaif-v": Preset(
        "openbmb/RLAIF-V-Dataset",
        "preference",
        {"prompt": "question", "images": "image"},
        summary="question / image (embedded) / chosen / rejected",
    ),
    "mmpr-v1.2": Preset(
        "OpenGVLab/MMPR-v1.2",
        "preference",
        {"prompt": "question", "images": "image"},
        needs="source: the downloaded dataset directory (its meta.json names the annotation "
        "files and their image roots)",
        local_only=True,
        summary="annotation JSONL files per source: question (with <image>) / image (path under "
        "the source's root) / chosen / rejected",
    ),
    "omnialign-v-dpo": Preset(
        "PhoenixZ/OmniAlign-V-DPO",
        "preference",
        {"prompt": "prompt", "images": "image"},
        needs="source: a downloaded category file (e.g. chart.jsonl); image_root: where images.tar was extracted",
        local_only=True,
        summary="JSONL per category: prompt (with <image>) / image (path) / chosen / rejected",
    ),
    "r1-reward": Preset(
        "yifanzhang114/R1-Reward-RL",
        "preference",
        transform=r1_reward_pair,
        summary="message (question and both responses in one chat) / answer (<answer>N</answer>) / "
        "image: the preferred response becomes chosen",
    ),
    # text-only preference pairs
    "tulu3-preference": Preset(
        "allenai/llama-3.1-tulu-3-8b-preference-mixture",
        "preference",
        summary="prompt / chosen and rejected as message lists (the assistant turn taken)",
    ),
    "olmo2-preference": Preset(
        "allenai/olmo-2-1124-7b-preference-mix",
        "preference",
        summary="chosen and rejected as message lists (the prompt from their shared turns)",
    ),
    "ultrafeedback-binarized": Preset(
        "HuggingFaceH4/ultrafeedback_binarized",
        "preference",
        split="train_prefs",
        summary="prompt / chosen and rejected as message lists; split train_prefs",
    ),
    "shp": Preset(
        "stanfordnlp/SHP",
        "preference",
        transform=shp_pair,
        summary="history / human_ref_A / human_ref_B / labels (1: A preferred)",
    ),
    # RL rows
    "geometry3k": Preset(
        "hiyouga/geometry3k",
        "rl",
        {"prompt": "problem"},
        summary="problem (with <image>) / images (embedded list) / answer",
    ),
    "multimodal-open-r1-8k": Preset(
        "lmms-lab/multimodal-open-r1-8k-verified",
        "rl",
        {"prompt": "problem", "images": "image"},
        transform=answer_in_tags,
        summary="problem / image (embedded) / solution (<answer>...</answer>)",
    ),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        raise ValueError(
            f"unknown data preset {name!r}{f'; did you mean {close[0]!r}' if close else ''} "
            f"(presets: {', '.join(PRESETS)})"
        ) from None

"""BaseRewardScorer: batched scoring of (prompt with its images, completion) by BaseReward models.

The images reach the reward model: each prompt is rendered with the checkpoint's own chat template,
its images go through the checkpoint's processor (after a per-image pixel bound), and the reward
model sees pixel values next to the text. Several checkpoints are averaged (the paper's ensemble);
rows with no image can be routed to a text-only reward model (the paper's recipe for text inputs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image as PILImage

from policies.chat import embedded_images, is_vlm_processor, render_conversation
from reward.base import completion_text, message_text
from reward.model import BaseRewardModel

log = logging.getLogger(__name__)


def bound_pixels(image: PILImage.Image, max_pixels: int | None) -> PILImage.Image:
    """Downscale (keeping the aspect ratio) so width*height <= max_pixels; RGB always."""
    image = image.convert("RGB")
    if max_pixels and image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    return image


@dataclass
class ScoringBackend:
    """One loaded reward model with its processor (VLM) or tokenizer (text-only)."""

    model: BaseRewardModel
    processor: Any

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> ScoringBackend:
        from policies.loading import load_processor

        return cls(BaseRewardModel.from_pretrained(path, device=device), load_processor(str(path)))

    @torch.inference_mode()
    def score(self, conversations: list[list[dict]], images: list[list[PILImage.Image]]) -> list[float]:
        device = next(self.model.parameters()).device
        texts = [render_conversation(self.processor, c) for c in conversations]
        if is_vlm_processor(self.processor):
            flat = [img for imgs in images for img in imgs]
            inputs = self.processor(text=texts, images=flat or None, padding=True, padding_side="right",
                                    return_tensors="pt")
        else:
            inputs = self.processor(text=texts, padding=True, padding_side="right", return_tensors="pt",
                                    add_special_tokens=False)
        inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        return self.model(**inputs).tolist()


@dataclass
class BaseRewardScorer:
    """A TRL-compatible reward: raw BaseReward scores (mean over an ensemble), batched."""

    backends: list[ScoringBackend]
    text_backend: ScoringBackend | None = None
    batch_size: int = 16
    max_pixels: int | None = 200_704
    calibrate: bool = False

    def __post_init__(self) -> None:
        self.__name__ = "basereward"  # the name TRL logs this reward under

    @classmethod
    def from_paths(cls, paths: list[str], text_path: str | None = None, device: str = "cpu",
                   **kwargs: Any) -> BaseRewardScorer:
        if not paths:
            raise ValueError("BaseRewardScorer needs at least one checkpoint (reward.model.paths)")
        return cls([ScoringBackend.load(p, device) for p in paths],
                   ScoringBackend.load(text_path, device) if text_path else None, **kwargs)

    @staticmethod
    def _conversation(prompt: Any, completion: Any, n_images: int) -> list[dict]:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        has_parts = any(isinstance(m.get("content"), list) and any(p.get("type") == "image" for p in m["content"])
                        for m in messages)
        if n_images and not has_parts:  # images came in the `images` column: put them before the user text
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            user = messages[first]
            messages = [*messages[:first], {"role": "user", "content": [{"type": "image"}] * n_images
                                            + [{"type": "text", "text": message_text(user)}]}, *messages[first + 1:]]
        return [*messages, {"role": "assistant", "content": completion_text(completion)}]

    def _score_with(self, backend: ScoringBackend, convs: list, imgs: list) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(convs), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            raw = backend.score(convs[chunk], imgs[chunk])
            if self.calibrate:
                h = backend.model.head_cfg
                raw = [(s - h.score_mean) / (h.score_std or 1.0) for s in raw]
            scores += raw
        return scores

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        column_images = columns.get("images") or [None] * n
        imgs = [[bound_pixels(im, self.max_pixels) for im in ((embedded_images(p) if isinstance(p, list) else []) or list(col or []))]
                for p, col in zip(prompts, column_images, strict=True)]
        convs = [self._conversation(p, c, len(im)) for p, c, im in zip(prompts, completions, imgs, strict=True)]
        out: list[float | None] = [None] * n
        text_rows = [i for i in range(n) if not imgs[i]] if self.text_backend else []
        mm_rows = [i for i in range(n) if i not in set(text_rows)]
        if mm_rows:
            per_model = [self._score_with(b, [convs[i] for i in mm_rows], [imgs[i] for i in mm_rows])
                         for b in self.backends]
            for j, i in enumerate(mm_rows):
                out[i] = sum(scores[j] for scores in per_model) / len(per_model)
        if text_rows:
            got = self._score_with(self.text_backend, [convs[i] for i in text_rows], [[] for _ in text_rows])
            for i, s in zip(text_rows, got, strict=True):
                out[i] = s
        return out

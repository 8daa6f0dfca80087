"""BaseRewardScorer: batched scoring of (prompt with its images, completion) by BaseReward models.

The images reach the reward model: each prompt is rendered with the checkpoint's own chat template,
its images go through the checkpoint's processor (after a per-image pixel bound), and the reward
model sees pixel values next to the text. Several checkpoints are averaged (the paper's ensemble);
rows with no image can be routed to a text-only reward model (the paper's recipe for text inputs).

`ScorerOptions` is the scorer's options and, with where its actors run, the `reward.model:` section
of the GRPO recipe's config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image as PILImage

from policies.chat import as_messages, embedded_images, is_vlm_processor, render_conversation, with_image_parts
from reward.base import completion_text
from reward.model import BaseRewardModel

log = logging.getLogger(__name__)


@dataclass
class ScorerOptions:
    # BaseReward checkpoint(s): one path, or several whose scores are averaged (the paper's ensemble).
    paths: list[str] = field(default_factory=list)
    # Optional text-only reward model that scores rows without images (the paper's routing).
    text_path: str | None = None
    batch_size: int = 16
    max_pixels: int | None = 200_704  # per image, before the processor (28*28*256)
    device: str | None = None  # None: cuda if this process has a GPU, else cpu
    # Standardise scores with the mean/std stored in the checkpoint (before the hybrid's sigmoid).
    calibrate: bool = False


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


class BaseRewardScorer:
    """A TRL-compatible reward: raw BaseReward scores (mean over an ensemble), batched."""

    def __init__(self, options: ScorerOptions):
        if not options.paths:
            raise ValueError("BaseRewardScorer needs at least one checkpoint (reward.model.paths)")
        self.options = options
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.backends = [ScoringBackend.load(p, device) for p in options.paths]
        self.text_backend = ScoringBackend.load(options.text_path, device) if options.text_path else None
        self.__name__ = "basereward"  # the name TRL logs this reward under

    @classmethod
    def from_paths(cls, paths: list[str], text_path: str | None = None, **options: Any) -> BaseRewardScorer:
        return cls(ScorerOptions(paths=list(paths), text_path=text_path, **options))

    @staticmethod
    def _conversation(prompt: Any, completion: Any, n_images: int) -> list[dict]:
        """The prompt (images in the `images` column get placeholders) followed by the completion."""
        messages = with_image_parts(as_messages(prompt), n_images)
        return [*messages, {"role": "assistant", "content": completion_text(completion)}]

    def _score_with(self, backend: ScoringBackend, convs: list, imgs: list) -> list[float]:
        scores: list[float] = []
        size = self.options.batch_size
        for start in range(0, len(convs), size):
            raw = backend.score(convs[start:start + size], imgs[start:start + size])
            scores += [backend.model.stats.standardize(s) for s in raw] if self.options.calibrate else raw
        return scores

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        column_images = columns.get("images") or [None] * n
        imgs = [[bound_pixels(im, self.options.max_pixels)
                 for im in ((embedded_images(p) if isinstance(p, list) else []) or list(col or []))]
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

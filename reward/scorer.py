"""RewardModelScorer: batched scoring of (prompt with its images, completion) by reward models (BaseReward, or
any published scalar layout: reward/layouts.py).

The images reach the reward model: each prompt is rendered with the checkpoint's own chat template,
its images go through the checkpoint's processor (after a per-image pixel bound), and the reward
model sees pixel values next to the text. Several checkpoints are averaged (the paper's ensemble);
rows with no image can be routed to a text-only reward model (the paper's recipe for text inputs).

Keeping the model busy (what makes a scalar reward model an order of magnitude cheaper than a
generative judge): the next batch is prepared (chat template, tokenizer, transformers' torchvision
image processor, run on the scorer's device) on a thread while the model scores the current one;
rows are batched by length (less padding), a prompt's completions staying together; and an image
that several rows share (GRPO scores G completions of each prompt) is resized once per call and goes
through the vision encoder once per batch, its features reused for every row (transformers'
`mm_encoder_outputs`).

The scorer is built from `RewardModelOptions` (reward/options.py), the `reward.model:` section of a GRPO config.
"""

from __future__ import annotations

import inspect
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image as PILImage

from adapters.transformers import expand_image_tokens, returns_mm_token_type_ids, runs_standard_steps
from policies.chat import (
    as_messages,
    embedded_images,
    fingerprints,
    image_fingerprint,
    is_vlm_processor,
    message_text,
    render_conversation,
    tokenizer_of,
    with_image_parts,
)
from reward.base import completion_text
from reward.model import BaseRewardModel, ScoreStats, load_reward_model
from reward.options import RewardModelOptions
from reward.stats import mean_std

log = logging.getLogger(__name__)


def bound_pixels(image: PILImage.Image, max_pixels: int | None) -> PILImage.Image:
    """Downscale (keeping the aspect ratio) so width*height <= max_pixels; RGB always."""
    image = image.convert("RGB")
    if max_pixels and image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    return image


def bound_rows(images: list[list[PILImage.Image]], max_pixels: int | None) -> list[list[PILImage.Image]]:
    """`bound_pixels` of every row's images, an image that several rows show (GRPO scores G completions
    of each prompt, each row with its own decoded copy) resized once: a resize costs ~7 ms for a
    1024 x 1024 photo, the checksum that finds the copies ~0.6 ms. Images already within the bound are
    only converted (cheaper than their checksum), once per image object."""
    resized: dict[tuple, PILImage.Image] = {}  # by content: equal copies
    done: dict[int, PILImage.Image] = {}  # by object: rows that share one (share_equal_images)

    def bound(image: PILImage.Image) -> PILImage.Image:
        if id(image) in done:
            return done[id(image)]
        if not max_pixels or image.width * image.height <= max_pixels:
            out = bound_pixels(image, max_pixels)
        else:
            key = image_fingerprint(image)
            if key not in resized:
                resized[key] = bound_pixels(image, max_pixels)
            out = resized[key]
        done[id(image)] = out
        return out

    return [[bound(image) for image in row] for row in images]


@dataclass
class Batch:
    """A batch ready for the model, on its device. With distinct images: `inputs` has the pixels of
    each distinct image once (`pixel_values`, `distinct_grid_thw`) and `image_grid_thw` per occurrence;
    `occurrence[k]` is the distinct image the batch's k-th image is."""

    inputs: dict[str, torch.Tensor]
    occurrence: list[int] | None = None


def process_distinct_images(
    processor: Any, texts: list[str], images: list[Any], device: torch.device
) -> tuple[dict[str, torch.Tensor], list[int]] | None:
    """What `processor(text=texts, images=images)` gives, except that an image several rows share (a
    prompt's G completions) is resized and normalised once: its pixels appear once, under
    `distinct_grid_thw`, while the text gets every occurrence's placeholder tokens. Built from the
    steps of transformers' multimodal processors (adapters/transformers.py); None for a processor that does
    its own processing (the caller then calls it as usual)."""
    if not runs_standard_steps(processor):
        return None
    keys = fingerprints(images)  # rows that share an image object (bound_rows) checksum it once
    index: dict[tuple, int] = {}
    occurrence = [index.setdefault(key, len(index)) for key in keys]
    distinct = [images[keys.index(key)] for key in index]
    extra = {"device": str(device)} if device.type == "cuda" else {}  # torchvision ops on the GPU
    pixels = processor.image_processor(distinct, return_tensors="pt", **extra)
    expanded = expand_image_tokens(processor, texts, pixels, occurrence)
    tokens = processor.tokenizer(expanded, padding=True, padding_side="right", return_tensors="pt")
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    if returns_mm_token_type_ids(processor):
        inputs["mm_token_type_ids"] = mm_token_type_ids(processor, tokens["input_ids"])
    grid = pixels["image_grid_thw"]  # [N_distinct, 3]
    inputs.update(pixel_values=pixels["pixel_values"], distinct_grid_thw=grid, image_grid_thw=grid[occurrence])
    return inputs, occurrence


def mm_token_type_ids(processor: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """The processor's `create_mm_token_type_ids` (0 text, 1 image, 2 video, 3 audio tokens) in one
    vectorised pass over the batch (transformers' runs numpy per row: 2 ms of a 9 ms CPU batch).
    input_ids: [B, T] -> [B, T]"""
    types = torch.zeros_like(input_ids)
    for value, ids in ((1, processor.image_token_ids), (2, processor.video_token_ids), (3, processor.audio_token_ids)):
        ids = [i for i in ids if i is not None]
        if ids:
            types[torch.isin(input_ids, torch.tensor(ids))] = value
    return types


@dataclass
class ScoringBackend:
    """One loaded reward model with its processor (VLM) or tokenizer (text-only)."""

    model: BaseRewardModel
    processor: Any
    encode_images_once: bool = True

    @classmethod
    def load(
        cls, path: str, device: str = "cpu", encode_images_once: bool = True, dtype: str = "auto"
    ) -> ScoringBackend:
        """Any scalar reward-model layout (reward/layouts.py) with its own processor (its chat template)."""
        from policies.loading import load_processor

        processor = load_processor(str(path))
        tokenizer = tokenizer_of(processor)
        model = load_reward_model(path, device=device, pad_token_id=tokenizer.pad_token_id, dtype=dtype)
        # Image features encoded once per batch go through the backbone's `mm_encoder_outputs`: a model this
        # project wraps around its backbone (BaseReward, value head) takes them; a sequence classifier, the pixels.
        return cls(model, processor, encode_images_once and isinstance(model, BaseRewardModel))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_multimodal(self) -> bool:
        return self.model.is_multimodal and is_vlm_processor(self.processor)

    def prepare(self, conversations: list[list[dict]], images: list[list[PILImage.Image]]) -> Batch:
        """The CPU side of scoring (it runs on the prefetch thread): template, tokens, pixels."""
        device = self.device
        texts = [render_conversation(self.processor, c) for c in conversations]
        flat = [img for imgs in images for img in imgs]
        occurrence = None
        if not is_vlm_processor(self.processor):
            inputs = self.processor(
                text=texts, padding=True, padding_side="right", return_tensors="pt", add_special_tokens=False
            )
        elif (
            flat
            and self.encode_images_once
            and (distinct := process_distinct_images(self.processor, texts, flat, device)) is not None
        ):
            inputs, occurrence = distinct
        else:
            extra = {"device": str(device)} if device.type == "cuda" and flat else {}
            inputs = self.processor(
                text=texts, images=flat or None, padding=True, padding_side="right", return_tensors="pt", **extra
            )
        tensors = {k: v.to(device, non_blocking=True) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        return Batch(tensors, occurrence)

    @torch.inference_mode()
    def run(self, batch: Batch) -> list[float]:
        inputs = batch.inputs if batch.occurrence is None else self._with_image_features(batch)
        return self.model(**inputs).tolist()

    def score(self, conversations: list[list[dict]], images: list[list[PILImage.Image]]) -> list[float]:
        return self.run(self.prepare(conversations, images))

    def _with_image_features(self, batch: Batch) -> dict[str, Any]:
        """The backbone's inputs for a batch of distinct images: each encoded once, its features handed
        to every row that shows it (`mm_encoder_outputs`, transformers' VLMs); a backbone without
        that argument gets every occurrence's pixels instead."""
        inputs = dict(batch.inputs)
        pixels, grid = inputs.pop("pixel_values"), inputs.pop("distinct_grid_thw")
        backbone = self.model.backbone
        if "mm_encoder_outputs" in inspect.signature(backbone.forward).parameters:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            features = backbone.get_image_features(pixels, grid, return_dict=True).pooler_output  # each [tokens, H]
            shared = tuple(features[j] for j in batch.occurrence)
            return {**inputs, "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=shared)}}
        per_image = pixels.split(grid.prod(-1).tolist())  # each distinct image's patch rows
        inputs["pixel_values"] = torch.cat([per_image[j] for j in batch.occurrence])
        return inputs


def length_order(conversations: list[list[dict]], images: list[list[Any]]) -> list[int]:
    """Row indices in batching order: by prompt length, a prompt's rows together (they share its
    images), then by completion length: batches of similar lengths pad little.

    The same rows give the same order in every run: a prompt's rows are found by its texts and its
    image objects (bound_rows gives the rows of a prompt one object per image) and prompts of equal
    length keep the order they come in. (Ordering by the prompts' repr, images included, ordered them
    by memory address: the batches' row order, and so the scores' last bits, changed from run to run.)"""
    first: dict[tuple, int] = {}

    def key(i: int) -> tuple:
        *prompt, answer = conversations[i]
        texts = tuple(message_text(m) for m in prompt)
        group = first.setdefault((texts, tuple(map(id, images[i]))), i)
        return (sum(map(len, texts)), len(images[i]), group, len(message_text(answer)))

    return sorted(range(len(conversations)), key=key)


class RewardModelScorer:
    """A TRL-compatible reward: reward-model scores (any scalar layout; several averaged), batched.

    Routing (the paper's recipe): a row with images goes to the models that see images; models without a
    vision tower get the image-free rows (and, when no model sees images, every row, as text); with
    `text_path`, image-free rows go to that text model alone. An ensemble averages standardised scores:
    each model's (score - mean) / std, with the statistics its checkpoint ships (a BaseReward's), else
    those of the scores it gave in its first call (the first GRPO step's completions; fixed from then on;
    replicas on several actors share one estimate: `calibration` / `adopt_calibration`), since the models'
    scales differ. A single model's scores are raw, or standardised with `calibrate`."""

    def __init__(self, options: RewardModelOptions):
        if not options.paths:
            raise ValueError("RewardModelScorer needs at least one checkpoint (reward.model.paths)")
        self.options = options
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.backends = [
            ScoringBackend.load(p, device, options.encode_images_once, options.dtype) for p in options.paths
        ]
        self.text_backend = (
            ScoringBackend.load(options.text_path, device, dtype=options.dtype) if options.text_path else None
        )
        self.estimated: dict[int, ScoreStats] = {}  # backend -> statistics from its first call (it shipped none)
        self.__name__ = "model"  # the name TRL logs this reward under: its scheme and its config section (reward.model)

    @classmethod
    def from_paths(cls, paths: list[str], text_path: str | None = None, **options: Any) -> RewardModelScorer:
        return cls(RewardModelOptions(paths=list(paths), text_path=text_path, **options))

    @staticmethod
    def _conversation(prompt: Any, completion: Any, n_images: int) -> list[dict]:
        """The prompt (images in the `images` column get placeholders) followed by the completion."""
        messages = with_image_parts(as_messages(prompt), n_images)
        return [*messages, {"role": "assistant", "content": completion_text(completion)}]

    def _score_with(self, backend: ScoringBackend, convs: list, imgs: list) -> list[float]:
        order = length_order(convs, imgs) if self.options.sort_by_length else list(range(len(convs)))
        size = self.options.batch_size
        parts = [order[start : start + size] for start in range(0, len(order), size)]

        def prepare(part: list[int]) -> Batch:
            return backend.prepare([convs[i] for i in part], [imgs[i] for i in part])

        prefetch = self.options.prefetch if self.options.prefetch is not None else backend.device.type == "cuda"
        scores: list[float] = [0.0] * len(convs)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-prepare") as pool:
            ahead = pool.submit(prepare, parts[0]) if parts and prefetch else None
            for k, part in enumerate(parts):
                batch = ahead.result() if ahead is not None else prepare(part)
                ahead = pool.submit(prepare, parts[k + 1]) if prefetch and k + 1 < len(parts) else None
                for i, score in zip(part, backend.run(batch), strict=True):
                    scores[i] = score
        return scores

    def _stats(self, b: int, scores: list[float]) -> ScoreStats:
        """Backend b's score statistics: shipped with its checkpoint, else estimated once from `scores`."""
        shipped = self.backends[b].model.stats
        if shipped is not None:
            return shipped
        if b not in self.estimated:
            finite = [x for x in scores if math.isfinite(x)]
            mean, std = mean_std(finite) if len(finite) > 1 else (finite[0] if finite else 0.0, 1.0)
            self.estimated[b] = ScoreStats(mean, std or 1.0)
            log.info(
                "reward model %s ships no score statistics: standardising its scores with mean %.4g, std %.4g "
                "of the %d it gave first",
                self.options.paths[b],
                mean,
                std or 1.0,
                len(finite),
            )
        return self.estimated[b]

    @property
    def standardizes(self) -> bool:
        """Scores are standardised: an ensemble's always (the models' scales differ), one model's with `calibrate`."""
        return len(self.backends) > 1 or self.options.calibrate

    def estimates_stats(self) -> bool:
        """Whether this scorer standardises with statistics it estimates (a model shipped none)."""
        return self.standardizes and any(backend.model.stats is None for backend in self.backends)

    def calibration(self) -> dict[int, ScoreStats]:
        """The statistics estimated so far (model index -> stats), to hand to other replicas of this scorer."""
        return dict(self.estimated)

    def adopt_calibration(self, estimated: dict[int, ScoreStats]) -> None:
        """Standardise with another replica's estimates: several reward-model actors (or one Ray restarted) then
        score alike, instead of each estimating from the share of the rows it was sent first."""
        self.estimated.update(estimated)

    def _backends_for(self, has_images: bool) -> list[int]:
        """The ensemble members that score a row: with images, those that see images (all, as text, when none
        does); without, every member."""
        seeing = [b for b, backend in enumerate(self.backends) if backend.is_multimodal]
        return seeing if has_images and seeing else list(range(len(self.backends)))

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        column_images = columns.get("images") or [None] * n
        imgs = bound_rows(
            [
                (embedded_images(p) if isinstance(p, list) else []) or list(col or [])
                for p, col in zip(prompts, column_images, strict=True)
            ],
            self.options.max_pixels,
        )
        convs = [self._conversation(p, c, len(im)) for p, c, im in zip(prompts, completions, imgs, strict=True)]
        out: list[float | None] = [None] * n
        text_rows = [i for i in range(n) if not imgs[i]] if self.text_backend else []
        if text_rows:
            got = self._score_with(self.text_backend, [convs[i] for i in text_rows], [[] for _ in text_rows])
            for i, s in zip(text_rows, got, strict=True):
                out[i] = s
        routed = set(text_rows)
        members = {i: self._backends_for(bool(imgs[i])) for i in range(n) if i not in routed}
        per_model: dict[int, dict[int, float]] = {}
        for b, backend in enumerate(self.backends):
            rows = [i for i, bs in members.items() if b in bs]
            if rows:  # a text-only model sees no images: the rows it gets carry none, or are given as text
                got = self._score_with(
                    backend, [convs[i] for i in rows], [imgs[i] if backend.is_multimodal else [] for i in rows]
                )
                per_model[b] = dict(zip(rows, got, strict=True))
        standardize = self.standardizes
        stats = {b: self._stats(b, list(scores.values())) for b, scores in per_model.items()} if standardize else {}
        for i, bs in members.items():
            values = [stats[b].standardize(per_model[b][i]) if standardize else per_model[b][i] for b in bs]
            out[i] = sum(values) / len(values)
        return out

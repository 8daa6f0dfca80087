"""Tiny, offline Qwen2.5-VL (and Qwen2 text) models for tests, the demo and CPU experiments.

There is no model hub at run time, so everything a real checkpoint has is built here from scratch:
a byte-level BPE tokenizer trained on a small corpus with Qwen's special tokens, Qwen's chat
template, the real `Qwen2_5_VLProcessor` and the real `Qwen2_5_VLForConditionalGeneration`
architecture with random weights. The result is saved with `save_pretrained`, so every loader in
the project treats it exactly like `Qwen/Qwen2.5-VL-3B-Instruct`.

The tokenizer is trained on a corpus the caller gives: a task's own vocabulary (the shapes task
builds its tiny policy with `rl.tasks.models.make_tiny_policy`), so a few hundred tokens cover it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# The special tokens every Qwen2/Qwen2.5-VL checkpoint carries; the processor looks them up by name.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template without the default system prompt (fewer tokens for tiny runs).
# Image parts become <|vision_start|><|image_pad|><|vision_end|>; the processor expands the pad.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Sized for a 2-core CPU and for vLLM's CPU attention kernel (head_dim 64 works, 16 does not).
TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=1024,
)
TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=128,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
)
# 56x56 images -> 4x4 patches of 14 px -> 2x2 merged tokens: one token per quadrant of the image.
TINY_IMAGE_PIXELS = (56 * 56, 112 * 112)


def build_tokenizer(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE locally and wrap it like a Qwen tokenizer (special tokens, chat template)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    return fast


def build_processor(
    tokenizer: PreTrainedTokenizerFast, pixels: tuple[int, int] = TINY_IMAGE_PIXELS
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor around `tokenizer`; images are resized to `pixels` = (min, max) pixels."""
    min_pixels, max_pixels = pixels
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def make_tiny_qwen2_5_vl(
    out_dir: str | Path, corpus: list[str], seed: int = 0, text: dict[str, Any] | None = None
) -> Path:
    """Build and save a tiny random-weight Qwen2.5-VL policy with its processor (tokenizer trained on
    `corpus`). Returns `out_dir`.

    `text` overrides fields of the language model's config (TINY_TEXT), e.g. a mid-size benchmark
    policy: {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
    "num_attention_heads": 16} (head_dim stays 64, which the M-RoPE sections assume)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(build_tokenizer(corpus))
    tokenizer = processor.tokenizer
    special = _token_ids(tokenizer)
    text_config = dict(
        TINY_TEXT,
        **(text or {}),
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
        **special,
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(TINY_VISION, out_hidden_size=text_config["hidden_size"]),  # merger feeds the LM
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
        **special,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    model.generation_config.eos_token_id = special["eos_token_id"]
    model.generation_config.pad_token_id = special["pad_token_id"]
    model.generation_config.bos_token_id = special["bos_token_id"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_tiny_qwen2(out_dir: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """A tiny text-only Qwen2 causal LM with a tokenizer trained on `corpus` (text-only reward models)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_TEXT, **_token_ids(tokenizer))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

"""The models the shapes task runs on, built offline: the tiny Qwen2.5-VL (or Qwen2) the demo and the tests
train, with a tokenizer that knows the task's words, and random-weight models of real dimensions for the GPU
lane and the GPU benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies.tiny import make_tiny_qwen2, make_tiny_qwen2_5_vl
from rl.tasks.shapes import vocabulary_corpus


def make_tiny_policy(
    out_dir: str | Path, seed: int = 0, text: dict[str, Any] | None = None, text_only: bool = False
) -> Path:
    """The offline tiny Qwen2.5-VL (or, `text_only`, Qwen2) with a tokenizer that knows this task's
    words. `text` overrides fields of the language model's config (see policies.tiny)."""
    if text_only:
        return make_tiny_qwen2(out_dir, vocabulary_corpus(), seed=seed)
    return make_tiny_qwen2_5_vl(out_dir, vocabulary_corpus(), seed=seed, text=text)


def make_real_shape_model(name: str, out: str | Path, reward_model: bool = False) -> Path:
    """A random-weight model with `name`'s real dimensions (policies/known_models.py) saved in `out`: the
    policy, or (`reward_model`) a BaseReward model on its backbone; built directly on the GPU (a CPU init
    of 7.76B weights takes minutes), with this task's offline tokenizer and a processor for images up to
    448 x 448. Memory and speed are the real model's; answers are noise (the GPU lane, GPU benchmarks)."""
    import torch

    from policies.known_models import known_config
    from policies.tiny import build_processor, build_tokenizer

    processor = build_processor(build_tokenizer(vocabulary_corpus()), pixels=(56 * 56, 448 * 448))
    tok = processor.tokenizer
    config = known_config(name)
    for key, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        setattr(config, key, tok.convert_tokens_to_ids(token))
    for sub in (config, config.text_config):
        sub.eos_token_id, sub.pad_token_id, sub.bos_token_id = tok.eos_token_id, tok.pad_token_id, tok.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        if reward_model:
            from transformers import AutoModel

            from reward.model import BaseRewardModel

            model = BaseRewardModel(AutoModel.from_config(config, dtype=torch.bfloat16))
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
    if reward_model:
        model.save_pretrained(out, processor)
    else:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out

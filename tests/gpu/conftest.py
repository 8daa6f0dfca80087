"""The GPU lane (`pytest -m gpu tests/gpu`): random-weight models of the real shapes on one CUDA GPU.

Skipped where no CUDA device is visible. On the lent GPU machine: see ../shared/gpu/README.md (carry
`.device-carry`, then `source .device-carry/setup.sh && python3 -m pytest -m gpu tests/gpu -q -x`).
The models are the published Qwen2.5-VL-3B and -7B dimensions (policies/known_models.py) with random
weights and the offline tiny tokenizer (its token ids put into the config): memory and speed are the
real ones, answers are noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible (the GPU lane runs on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def build_real_shape(name: str, out: Path, reward_model: bool = False) -> Path:
    """Save a random-weight model with `name`'s real dimensions, built directly on the GPU (a CPU
    init of 7.76B weights takes minutes), with the offline tokenizer and a processor for 448 x 448 images."""
    import torch

    from policies.known_models import known_config
    from policies.tiny import build_processor, build_tokenizer
    from rl.tasks.shapes import vocabulary_corpus

    processor = build_processor(build_tokenizer(vocabulary_corpus()), pixels=(56 * 56, 448 * 448))
    tok = processor.tokenizer
    config = known_config(name)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(config, key, tok.convert_tokens_to_ids(token))
    for sub in (config, config.text_config):
        sub.eos_token_id, sub.pad_token_id, sub.bos_token_id = tok.eos_token_id, tok.pad_token_id, tok.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
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


@pytest.fixture(scope="session")
def policy_3b(tmp_path_factory) -> str:
    return str(build_real_shape("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path_factory.mktemp("qwen25vl3b")))


@pytest.fixture(scope="session")
def reward_7b(tmp_path_factory) -> str:
    return str(build_real_shape("Qwen/Qwen2.5-VL-7B-Instruct", tmp_path_factory.mktemp("basereward7b"),
                                reward_model=True))


@pytest.fixture()
def brl():
    """brl(*args): `brl ...` in a fresh process (the learner's process chooses its GPU before CUDA starts)."""

    def run(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        return subprocess.run([sys.executable, "-m", "recipes.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    return run

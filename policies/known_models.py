"""The shapes of the models the shipped GPU recipes name, known offline.

`brl plan` needs a model's dimensions to size its memory, and the GPU test lane builds random-weight
models of the real shapes; neither may depend on the model hub. These are the dimensions of the
published Qwen2.5-VL-3B-Instruct and -7B-Instruct configs (3.75B and, without the LM head, 7.75B
parameters), and of the published reward models built on the 7B (R1-Reward, Skywork-VL-Reward-7B).
`model_config` prefers a local checkpoint's (or the hub cache's) own config, then these, then the hub: a
known model costs no network wait offline.
"""

from __future__ import annotations

from typing import Any

_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)
_TOKENS = dict(
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    bos_token_id=151643,
    eos_token_id=151645,
)
_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}

KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(
        text=dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        out_hidden_size=2048,
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": dict(
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
        out_hidden_size=3584,
    ),
}
# Published reward models on those backbones (their model cards: fine-tunes of Qwen2.5-VL-7B-Instruct).
KNOWN_MODELS["yifanzhang114/R1-Reward"] = KNOWN_MODELS["Qwen/Qwen2.5-VL-7B-Instruct"]  # the generative judge
KNOWN_MODELS["Skywork/Skywork-VL-Reward-7B"] = KNOWN_MODELS["Qwen/Qwen2.5-VL-7B-Instruct"]  # + a value head


def known_config(name: str) -> Any:
    """A transformers config with the real dimensions of a model this project knows (None otherwise)."""
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        return None
    from transformers import Qwen2_5_VLConfig

    tied = spec["text"]["tie_word_embeddings"]
    text = dict(
        spec["text"],
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters=dict(_ROPE),
        **{k: v for k, v in _TOKENS.items() if k in ("bos_token_id", "eos_token_id")},
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(_VISION, out_hidden_size=spec["out_hidden_size"]),
        tie_word_embeddings=tied,
        dtype="bfloat16",
        **_TOKENS,
    )  # as published


def config_dtype(config: Any) -> str | None:
    """The dtype a config says its checkpoint stores ("bfloat16", ...), None when it does not say."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def model_config(path: str, trust_remote_code: bool = False) -> Any:
    """The config of the model at `path` (a local checkpoint or a hub id): a local or cached config
    first, then the shapes known offline (no network wait for those), then the hub."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError):
        pass
    config = known_config(path)
    if config is not None:
        return config
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        raise ValueError(
            f"{path}: no config.json there and the model hub is not reachable; this project "
            f"knows the shapes of {sorted(KNOWN_MODELS)} offline"
        ) from None

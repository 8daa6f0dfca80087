"""Block expansion: deepen a pretrained decoder without changing what it computes.

LLaMA Pro (Wu et al., 2024) adds decoder layers that are copies of existing ones with their output
projections (attention `o_proj`, MLP `down_proj`) set to zero: each new layer adds nothing to the residual
stream, so the deeper model's outputs are exactly the original's until training moves those projections.
Here the copies of the last layer are appended on top, where a reward model needs depth: a verifier reads
one last token, and checking a word against the image and then carrying the verdict to that token are
steps of their own, on top of what the policy's layers compute. A 2-layer backbone has no layer left for
them (the miniature's BaseReward, recipes/configs/tiny_cpu_rm.yaml, measured with and without).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's stack of decoder layers (`...layers`) of a causal LM, a vision-language model
    or their headless backbones; the vision tower's `blocks` are not it."""
    stacks = [
        module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, nn.ModuleList)
    ]
    if len(stacks) != 1:
        raise ValueError(
            f"{type(model).__name__}: expected one stack of decoder layers named 'layers', "
            f"found {len(stacks)}; block expansion supports Qwen2/Qwen2.5-VL-style models"
        )
    return stacks[0]


def expand_decoder(model: nn.Module, extra_layers: int) -> int:
    """Append `extra_layers` copies of the last decoder layer whose output projections are zero (the outputs
    are unchanged); the config says the new depth, so the model saves and reloads as a deeper model.
    Returns the new number of layers."""
    if extra_layers < 0:
        raise ValueError(f"extra_layers must be >= 0, got {extra_layers}")
    layers = decoder_layers(model)
    text_config = getattr(model.config, "text_config", None) or model.config
    for _ in range(extra_layers):
        layer = copy.deepcopy(layers[-1])
        try:
            outputs = (layer.self_attn.o_proj, layer.mlp.down_proj)
        except AttributeError as e:
            raise ValueError(
                f"{type(layer).__name__} has no self_attn.o_proj / mlp.down_proj to zero: "
                "block expansion supports Qwen2/Llama-style decoder layers"
            ) from e
        with torch.no_grad():
            for proj in outputs:
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()
        layer.self_attn.layer_idx = len(layers)  # its slot in the KV cache
        layers.append(layer)
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = [*text_config.layer_types, *[text_config.layer_types[-1]] * extra_layers]
    return len(layers)

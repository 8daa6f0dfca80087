"""Load a policy (vision-language or text-only) and its processor from a hub id or a local path."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_dtype(name: str) -> torch.dtype | str:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def check_model_source(path: str, field: str = "policy.path") -> None:
    """Refuse, before anything starts, a model that cannot load here: a path that is neither a
    directory nor a hub id, or a hub id missing from the local cache while the hub is offline."""
    if Path(path).is_dir():
        return
    from huggingface_hub import is_offline_mode, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        raise FileNotFoundError(
            f"{field}: {path} is neither a directory nor a hub id (namespace/name); if another "
            "recipe writes it (`brl sft CONFIG` writes OUTPUT_DIR/final), run that first"
        ) from None
    if is_offline_mode() and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise FileNotFoundError(
            f"{field}: {path} is not a local directory and not in the hub cache, and the hub is "
            f"offline (HF_HUB_OFFLINE): download it where the hub is reachable (`huggingface-cli "
            f"download {path}`) and point {field} at the local copy, or unset HF_HUB_OFFLINE"
        )


def is_vision_language(path: str, trust_remote_code: bool = False) -> bool:
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return hasattr(config, "vision_config")


def load_processor(path: str, max_pixels: int | None = None, trust_remote_code: bool = False):
    """The checkpoint's processor (VLM) or tokenizer (text-only), with an optional pixel bound."""
    if is_vision_language(path, trust_remote_code):
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        tokenizer = processor.tokenizer
    else:
        processor = tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision encoder of a Qwen2-VL-family model (`model.model.visual`; a reward model's `backbone.visual`),
    or None for text-only."""
    for holder in (getattr(model, "model", None), getattr(model, "backbone", None), model):  # policy, reward model
        tower = getattr(holder, "visual", None) if holder is not None else None
        if tower is not None:
            return tower
    return None


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop gradients into the vision encoder; returns how many parameters were frozen."""
    tower = vision_tower(model)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower to freeze (policy.freeze_vision=true)")
    frozen = 0
    for p in tower.parameters():
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def set_vision_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module, lr: float) -> int:
    """Give the vision encoder's parameters their own learning rate: each param group's encoder parameters
    move into a group of their own (the same options, `lr`). Called on a fresh optimizer, before its
    scheduler records each group's initial rate (so both follow the same schedule). Returns how many
    parameters moved."""
    tower = vision_tower(model)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (policy.vision_lr)")
    encoder = {id(p) for p in tower.parameters()}
    moved = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in encoder]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in encoder]
            moved.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": lr})
    for group in moved:
        optimizer.add_param_group(group)
    return sum(p.numel() for g in moved for p in g["params"])


class VisionLRMixin:
    """Mixed in front of a transformers Trainer: its optimizer gives the vision encoder `vision_lr` (None:
    the trainer's learning rate), through Trainer's documented `create_optimizer` hook."""

    vision_lr: float | None = None

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.vision_lr is not None:
            moved = set_vision_lr(optimizer, model if model is not None else self.model, self.vision_lr)
            log.info("vision encoder: %d parameters at learning rate %g", moved, self.vision_lr)
        return optimizer


def load_policy(
    path: str, dtype: str = "float32", trust_remote_code: bool = False, freeze_vision: bool = False
) -> torch.nn.Module:
    """A Qwen2.5-VL (any image-text-to-text model) or a causal LM, from a hub id or local directory."""
    auto = AutoModelForImageTextToText if is_vision_language(path, trust_remote_code) else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    if freeze_vision:
        log.info("froze %d vision-tower parameters", freeze_vision_tower(model))
    return model

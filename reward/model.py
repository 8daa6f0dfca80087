"""BaseRewardModel: a (vision-)language backbone whose LM head is replaced by an MLP scalar head.

The BaseReward recipe: Qwen2.5-VL backbone, the hidden state of the last non-padding token, a
2-layer MLP with SiLU giving one scalar. The head's depth, width and activation are configurable for
the paper's ablations (1 layer = a linear head). A text-only variant runs on a Qwen2 (any causal LM)
backbone for text-only inputs.

A checkpoint is a directory: the backbone as transformers saves it (`config.json` and safetensors,
sharded like `save_pretrained`), the head's weights (`reward_head.safetensors`), `reward_head.json`
(head shape and score statistics) and the processor/tokenizer files. Loading goes through
transformers' `from_pretrained` straight onto the target device: no random initialisation of
weights about to be overwritten, at most one host copy, no pickle, no remote code, bit-exact.

The head is built from `HeadConfig` (reward/options.py), the `head:` section of the reward-model recipe's config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from policies.loading import resolve_dtype
from reward.options import HeadConfig

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}  # HeadConfig.activation
HEAD_FILE = "reward_head.json"
HEAD_WEIGHTS_FILE = "reward_head.safetensors"
LEGACY_WEIGHTS_FILE = "model.safetensors"  # before the head had its own file: every weight, one file
MAX_SHARD_SIZE = "5GB"


@dataclass
class ScoreStats:
    """Score statistics on the training data, saved with the checkpoint for calibration
    (standardising scores before a sigmoid: `reward.model.calibrate`)."""

    mean: float = 0.0
    std: float = 1.0

    def standardize(self, score: float) -> float:
        return (score - self.mean) / (self.std or 1.0)


def build_head(in_features: int, cfg: HeadConfig) -> nn.Sequential:
    width = cfg.hidden_size or in_features
    layers: list[nn.Module] = []
    dim = in_features
    for _ in range(cfg.num_layers - 1):
        layers += [nn.Linear(dim, width), ACTIVATIONS[cfg.activation]()]
        dim = width
    layers.append(nn.Linear(dim, 1))
    return nn.Sequential(*layers)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token per row, for left or right padding. [B, T] -> [B]"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    return (attention_mask.long() * positions).argmax(dim=1)  # [B]


def text_hidden_size(config) -> int:
    text = getattr(config, "text_config", None) or config
    return text.hidden_size


class BaseRewardModel(nn.Module):
    """backbone (no LM head) + MLP head -> one scalar per sequence.

    `stats`: the score statistics the checkpoint ships (None: it ships none, as a value-head checkpoint)."""

    def __init__(self, backbone: nn.Module, head_cfg: HeadConfig | None = None, stats: ScoreStats | None = None):
        super().__init__()
        self.backbone = backbone
        self.head_cfg = head_cfg or HeadConfig()
        self.stats = stats
        param = next(backbone.parameters())
        self.head = build_head(text_hidden_size(backbone.config), self.head_cfg).to(param.dtype)

    @property
    def config(self):
        return self.backbone.config

    @property
    def is_multimodal(self) -> bool:
        return hasattr(self.backbone.config, "vision_config")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **mm_inputs) -> torch.Tensor:
        """Scores of a batch. input_ids/attention_mask: [B, T]; mm_inputs: pixel_values, image_grid_thw, ...

        Returns [B] float scores.
        """
        if not self.is_multimodal:
            mm_inputs = {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **mm_inputs)
        hidden = out.last_hidden_state  # [B, T, H]
        idx = last_token_index(attention_mask)  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # [B, H]
        pooled = pooled.to(next(self.head.parameters()).dtype)  # a head saved in another dtype than the backbone
        return self.head(pooled).squeeze(-1).float()  # [B]

    # -- construction and persistence ---------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        path: str,
        head_cfg: HeadConfig | None = None,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        seed: int | None = None,
    ) -> BaseRewardModel:
        """A fresh reward model on a pretrained backbone (policy checkpoint or hub id); the head is new."""
        backbone = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        if seed is not None:
            torch.manual_seed(seed)
        return cls(backbone, head_cfg)

    def save_pretrained(self, out_dir: str | Path, processor=None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out, max_shard_size=MAX_SHARD_SIZE)  # config + (sharded) safetensors
        head_state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head_state, out / HEAD_WEIGHTS_FILE, metadata={"format": "pt"})
        stats = self.stats or ScoreStats()
        head = {**asdict(self.head_cfg), "score_mean": stats.mean, "score_std": stats.std}
        (out / HEAD_FILE).write_text(json.dumps(head, indent=2))
        if processor is not None:
            processor.save_pretrained(out)
        return out

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto"
    ) -> BaseRewardModel:
        """`dtype`: the weights' dtype on the device ("auto": as saved; a BaseReward trained with float32
        masters is saved in float32, twice the memory of bfloat16 scoring)."""
        p = Path(path)
        for name in ("config.json", HEAD_FILE):
            if not (p / name).is_file():
                raise FileNotFoundError(f"{p} is not a BaseReward checkpoint: {name} is missing")
        head = json.loads((p / HEAD_FILE).read_text())
        stats = ScoreStats(head.pop("score_mean", 0.0), head.pop("score_std", 1.0)) if "score_mean" in head else None
        head_cfg = HeadConfig(**head)
        if not (p / HEAD_WEIGHTS_FILE).is_file():
            legacy = cls._from_legacy(p, head_cfg, stats, device)
            return legacy if dtype == "auto" else legacy.to(resolve_dtype(dtype))
        # Never trust_remote_code: only built-in architectures.
        backbone = AutoModel.from_pretrained(p, dtype=resolve_dtype(dtype), device_map={"": str(device)})
        model = cls(backbone, head_cfg, stats)
        model.head.load_state_dict(load_file(p / HEAD_WEIGHTS_FILE, device=str(device)), strict=True)
        return model.to(device).eval()

    @classmethod
    def from_value_head(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto"
    ) -> BaseRewardModel:
        """TRL's value-head layout (`AutoModelForCausalLMWithValueHead`, as Skywork-VL-Reward-7B ships it): a
        causal-LM checkpoint beside `value_head.safetensors` (or `.bin`) holding `v_head.summary.weight` [1, H]
        and `v_head.summary.bias` [1], a linear head on the language model's final (normed) hidden state, read
        at the last token. That is a BaseReward with a one-layer head: loaded as one, the head in the file's
        dtype (TRL casts the hidden state to it). Such a checkpoint ships no score statistics."""
        from reward.layouts import VALUE_HEAD_FILES, checkpoint_file

        found = [f for f in (checkpoint_file(str(path), name) for name in VALUE_HEAD_FILES) if f is not None]
        if not found:
            raise FileNotFoundError(f"{path} has no value head ({' or '.join(VALUE_HEAD_FILES)})")
        state = (
            load_file(found[0])
            if found[0].suffix == ".safetensors"
            else torch.load(found[0], map_location="cpu", weights_only=True)
        )
        keys = ("v_head.summary.weight", "v_head.summary.bias")
        if any(k not in state for k in keys):
            raise ValueError(f"{found[0]}: a value head holds {list(keys)}; this file has {sorted(state)[:6]}")
        backbone = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype), device_map={"": str(device)})
        model = cls(backbone, HeadConfig(num_layers=1))
        weight, bias = state[keys[0]], state[keys[1]]
        if weight.shape != (1, text_hidden_size(backbone.config)):
            raise ValueError(
                f"{found[0]}: v_head.summary.weight is {tuple(weight.shape)}, the backbone's hidden size "
                f"is {text_hidden_size(backbone.config)}"
            )
        model.head = model.head.to(weight.dtype)
        model.head.load_state_dict({"0.weight": weight, "0.bias": bias}, strict=True)
        return model.to(device).eval()

    @classmethod
    def _from_legacy(
        cls, p: Path, head_cfg: HeadConfig, stats: ScoreStats, device: str | torch.device
    ) -> BaseRewardModel:
        """A checkpoint written before the backbone was saved by transformers (every weight in one
        model.safetensors under our own key names): built empty on the device, then loaded strictly."""
        from adapters.transformers import no_init_weights

        if not (p / LEGACY_WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{p} is not a BaseReward checkpoint: {HEAD_WEIGHTS_FILE} is missing")
        state = load_file(p / LEGACY_WEIGHTS_FILE, device=str(device))
        dtype = next(iter(state.values())).dtype
        with torch.device(device), no_init_weights():
            model = cls(AutoModel.from_config(AutoConfig.from_pretrained(p), dtype=dtype), head_cfg, stats)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Buffers computed at construction (rotary inv_freq) are not saved; real weights must all be there.
        if unexpected or [k for k in missing if not k.endswith("inv_freq")]:
            raise ValueError(
                f"{p}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.eval()


class SequenceClassificationRewardModel(nn.Module):
    """A `*ForSequenceClassification` checkpoint with one label (TRL's RewardTrainer writes them; the
    Skywork-Reward-V2 series): its one logit is the score, pooled by transformers at the last non-padding
    token. Vision-language ones get the images. It ships no score statistics."""

    stats = None

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def is_multimodal(self) -> bool:
        return hasattr(self.model.config, "vision_config")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **mm_inputs) -> torch.Tensor:
        if not self.is_multimodal:
            mm_inputs = {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **mm_inputs).logits
        return logits[:, 0].float()  # [B]

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        pad_token_id: int | None = None,
        dtype: str | torch.dtype = "auto",
    ) -> SequenceClassificationRewardModel:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=resolve_dtype(dtype), device_map={"": str(device)}
        )
        if model.config.pad_token_id is None:  # transformers finds the last token of each row by the pad token
            model.config.pad_token_id = pad_token_id
        return cls(model).to(device).eval()


def load_reward_model(
    path: str | Path, device: str | torch.device = "cpu", pad_token_id: int | None = None, dtype: str = "auto"
) -> nn.Module:
    """A scalar reward model of any layout (reward/layouts.py), on `device`, in eval mode: called with
    (input_ids, attention_mask, **image inputs) it gives [B] scores; `.stats` are its shipped score
    statistics (None: it ships none); `.is_multimodal` says whether it sees images. `dtype`: its weights'
    dtype ("auto": as saved)."""
    from reward.layouts import layout_of

    layout = layout_of(str(path))
    if layout == "basereward":
        return BaseRewardModel.from_pretrained(path, device, dtype)
    if layout == "value_head":
        return BaseRewardModel.from_value_head(path, device, dtype)
    if layout == "sequence_classification":
        return SequenceClassificationRewardModel.from_pretrained(path, device, pad_token_id, dtype)
    raise ValueError(f"{path} is a generative reward model (no scalar head): it is a judge, used as reward.judge.path")

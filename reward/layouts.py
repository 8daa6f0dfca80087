"""Which kind of reward model a checkpoint is, told apart by its files (no torch: checked before anything loads).

| layout | what marks it | scored by |
|---|---|---|
| `basereward` | `reward_head.json` (this project's BaseReward: backbone + MLP head) | reward/scorer.py |
| `value_head` | `value_head.safetensors` (or `.bin`) beside a causal-LM checkpoint: TRL's `AutoModelForCausalLMWithValueHead` layout, as Skywork-VL-Reward ships | reward/scorer.py |
| `sequence_classification` | a config whose architecture is `*ForSequenceClassification` with one label (TRL's RewardTrainer output, the Skywork-Reward-V2 series) | reward/scorer.py |
| `generative` | any other chat model checkpoint (`config.json`): a judge that writes a verdict (R1-Reward, `brl train-rm paradigm=generative`) | reward/judge.py |

A checkpoint is a local directory or a hub id in the local hub cache.
"""

from __future__ import annotations

import json
from pathlib import Path

HEAD_FILE = "reward_head.json"  # reward/model.py writes it
VALUE_HEAD_FILES = ("value_head.safetensors", "value_head.bin")  # TRL's value-head layout
SCALAR_LAYOUTS = ("basereward", "value_head", "sequence_classification")
LAYOUTS = (*SCALAR_LAYOUTS, "generative")


def checkpoint_file(path: str, name: str) -> Path | None:
    """`name` in checkpoint `path` (a local directory, or a hub id found in the local hub cache), or None."""
    local = Path(path)
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        found = try_to_load_from_cache(path, name)
    except Exception:  # noqa: BLE001 - not a valid hub id either: nothing there
        return None
    return Path(found) if isinstance(found, str) else None


def layout_of(path: str) -> str:
    """The layout of the reward-model checkpoint at `path` (see the module docstring); a clear error naming
    what the folder lacks when it is none of them."""
    if checkpoint_file(path, HEAD_FILE):
        return "basereward"
    config_file = checkpoint_file(path, "config.json")
    if config_file is None:
        raise FileNotFoundError(
            f"{path} is not a reward-model checkpoint: it has no config.json (and no {HEAD_FILE}); "
            "train one with `brl train-rm CONFIG`, or point at a downloaded model folder"
        )
    if any(checkpoint_file(path, name) for name in VALUE_HEAD_FILES):
        return "value_head"
    config = json.loads(config_file.read_text())
    if any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        if labels != 1:
            raise ValueError(
                f"{path}: a sequence-classification model with {labels} labels; a reward model has one "
                "(its single logit is the score)"
            )
        return "sequence_classification"
    return "generative"


def check_scalar_reward_model(path: str, field: str) -> str:
    """`path`'s layout, which must give a scalar score (a reward model's branch of a reward scheme)."""
    layout = layout_of(path)
    if layout not in SCALAR_LAYOUTS:
        raise ValueError(
            f"{field}: {path} is a {layout} model (no scalar head: no {HEAD_FILE}, no "
            f"{VALUE_HEAD_FILES[0]}, not *ForSequenceClassification); a generative judge goes in "
            "reward.judge.path with reward.scheme: judge"
        )
    return layout

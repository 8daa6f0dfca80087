"""Bradley-Terry training of BaseReward models on transformers' Trainer.

Trainer brings gradient accumulation, bf16, DeepSpeed/FSDP through accelerate, checkpointing and
logging; this module adds only what is specific to pairwise reward modelling:

- `bt_loss`: -log sigmoid(r_w - r_l), plus the paper's two regularisers for ablation (off by default);
- `PairCollator`: chosen and rejected of every pair in ONE padded batch (one forward pass);
- `pair_metrics`: pairwise accuracy (ties are wrong), margin, chosen/rejected mean and std;
- `accuracy_by_group`: that accuracy per group of pairs (kind of rejected answer, task);
- `BTTrainer`: Trainer with that loss and those metrics on train and eval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from policies.chat import is_vlm_processor, render_conversation, tokenizer_of
from policies.loading import VisionLRMixin
from reward.stats import mean_std


def bt_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    zero_mean_weight: float = 0.0,
    chosen_len: torch.Tensor | None = None,
    rejected_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss on scores [B] (mean over pairs).

    zero_mean_weight: lambda * (r_w + r_l)^2, pulling rewards towards zero mean (the paper found it hurts).
    chosen_len/rejected_len: if given, scores are divided by response length in tokens (length
    normalisation, also found not to help); None = plain scores.
    """
    if chosen_len is not None and rejected_len is not None:
        chosen = chosen / chosen_len.clamp(min=1).to(chosen.dtype)
        rejected = rejected / rejected_len.clamp(min=1).to(rejected.dtype)
    loss = -F.logsigmoid(chosen - rejected)  # [B]
    if zero_mean_weight:
        loss = loss + zero_mean_weight * (chosen + rejected) ** 2
    return loss.mean()


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Accuracy counts a pair only when chosen > rejected strictly (ties and NaN are wrong)."""
    n = len(chosen)
    if n == 0:
        return {}
    correct = sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r)  # NaN compares False
    finite = [(c, r) for c, r in zip(chosen, rejected, strict=True) if math.isfinite(c) and math.isfinite(r)]

    cm, cs = mean_std([c for c, _ in finite])
    rm, rs = mean_std([r for _, r in finite])
    margin, _ = mean_std([c - r for c, r in finite])
    return {
        "accuracy": correct / n,
        "margin": margin,
        "chosen_mean": cm,
        "chosen_std": cs,
        "rejected_mean": rm,
        "rejected_std": rs,
    }


def accuracy_by_group(groups: list[str | None], chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Pairwise accuracy of each group of pairs (`groups[i]` names pair i's; None leaves it out), groups in
    sorted order: where a reward model fails (a kind of rejected answer, a task)."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        if group is not None:
            members[group].append(i)
    return {
        group: pair_metrics([chosen[i] for i in at], [rejected[i] for i in at])["accuracy"]
        for group, at in sorted(members.items())
    }


def held_out_breakdown(rows: Any, chosen: list[float], rejected: list[float]) -> dict[str, dict[str, float]]:
    """Accuracy on held-out pairs by kind of rejected answer and, where pairs name their task (the
    synthetic shapes pairs), by task for each kind (a near miss on a position question needs more of
    the image than one on a colour question)."""
    if "kind" not in rows.column_names:
        return {"eval_accuracy_by_kind": {}, "eval_accuracy_by_kind_and_task": {}}
    kinds = rows["kind"]
    tasks = rows["task"] if "task" in rows.column_names else [None] * len(kinds)
    by_kind_and_task = [None if task is None else f"{kind}/{task}" for kind, task in zip(kinds, tasks, strict=True)]
    return {
        "eval_accuracy_by_kind": accuracy_by_group(kinds, chosen, rejected),
        "eval_accuracy_by_kind_and_task": accuracy_by_group(by_kind_and_task, chosen, rejected),
    }


class PairCollator:
    """Rows {prompt, images, chosen, rejected} -> one batch of 2B sequences: all chosen, then all rejected."""

    def __init__(self, processor: Any, length_normalize: bool = False):
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.is_vlm = is_vlm_processor(processor)
        self.length_normalize = length_normalize

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        # No truncation: it would cut the response end, the very token the head reads. Prompt
        # lengths are bounded when the data is validated instead.
        responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        texts = [
            render_conversation(self.processor, [*r["prompt"], {"role": "assistant", "content": resp}])
            for r, resp in zip(rows * 2, responses, strict=True)
        ]
        images = [img.convert("RGB") for r in rows for img in (r.get("images") or [])]
        kwargs: dict[str, Any] = dict(text=texts, padding=True, padding_side="right", return_tensors="pt")
        if self.is_vlm:
            batch = dict(self.processor(images=(images * 2) or None, **kwargs))
        else:
            batch = dict(self.tokenizer(add_special_tokens=False, **kwargs))
        if self.length_normalize:
            batch["response_lengths"] = torch.tensor(
                [len(ids) for ids in self.tokenizer(responses, add_special_tokens=False)["input_ids"]]
            )
        return batch


class BTTrainer(VisionLRMixin, Trainer):
    """transformers.Trainer with the Bradley-Terry loss and pairwise metrics (and the backbone's `vision_lr`)."""

    def __init__(self, *args: Any, zero_mean_weight: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.zero_mean_weight = zero_mean_weight
        self._train_scores: dict[str, list[float]] = defaultdict(list)

    def _scores(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        lengths = inputs.pop("response_lengths", None)
        scores = model(**inputs)  # [2B]
        chosen, rejected = scores.chunk(2)  # [B], [B]
        cl, rl = lengths.chunk(2) if lengths is not None else (None, None)
        return chosen, rejected, cl, rl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected, cl, rl = self._scores(model, inputs)
        loss = bt_loss(chosen, rejected, self.zero_mean_weight, cl, rl)
        if model.training:
            self._train_scores["chosen"] += chosen.detach().float().tolist()
            self._train_scores["rejected"] += rejected.detach().float().tolist()
        return (loss, {"chosen": chosen, "rejected": rejected}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            chosen, rejected, cl, rl = self._scores(model, inputs)
            loss = bt_loss(chosen, rejected, self.zero_mean_weight, cl, rl).detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([chosen, rejected], dim=1)  # [B, 2]
        return loss, logits, torch.zeros(logits.shape[0], device=logits.device)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # Training-side pair metrics since the last log line (eval metrics come via compute_metrics).
        if self._train_scores["chosen"] and "loss" in logs:
            logs.update(
                {
                    f"train_{k}": v
                    for k, v in pair_metrics(self._train_scores["chosen"], self._train_scores["rejected"]).items()
                }
            )
            self._train_scores.clear()
        super().log(logs, *args, **kwargs)


def compute_pair_metrics(eval_pred) -> dict[str, float]:
    logits = eval_pred.predictions  # [N, 2]: chosen, rejected
    return pair_metrics(logits[:, 0].tolist(), logits[:, 1].tolist())

"""Train a BaseReward model: Qwen2.5-VL backbone + MLP head, Bradley-Terry loss on preference pairs.

    brl train-rm recipes/configs/tiny_cpu_rm.yaml [key=value ...]

The upstream half of the pipeline: its checkpoint is what `reward.model.paths` points the GRPO
recipes at. Each of the paper's ablations is one config change: `head.num_layers`,
`head.activation`, `loss.zero_mean_weight`, `loss.length_normalize`, `data.sources[].weight`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainingArguments, set_seed

from policies.loading import freeze_vision_tower, load_processor, resolve_dtype
from reward.model import BaseRewardModel, ScoreStats
from reward.train import BTTrainer, PairCollator, compute_pair_metrics, pair_metrics
from rl.config import RMRecipeConfig, load_config, to_yaml
from rl.data import load_preference_mixture
from rl.learner import check_update_precision, device_defaults
from rl.tasks.shapes import resolve_policy_path

log = logging.getLogger("brl.train_rm")


def load(path: str | None = None, overrides: Sequence[str] = ()) -> RMRecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of transformers' TrainingArguments."""
    return load_config(RMRecipeConfig, path, overrides, passthrough={"trainer": TrainingArguments})


def main(cfg: RMRecipeConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    check_update_precision(cfg.backbone, cfg.trainer, "backbone")
    train, held_out = load_preference_mixture(cfg.data)  # data problems surface before anything loads
    args = TrainingArguments(**{
        **device_defaults(), "logging_steps": 10, "report_to": ["tensorboard"], "save_strategy": "no",
        "eval_strategy": "no", "remove_unused_columns": False, "label_names": [],
        **cfg.trainer, "output_dir": str(out), "seed": cfg.seed})

    path = resolve_policy_path(cfg.backbone.path, out, cfg.seed, field="backbone.path")
    processor = load_processor(path, cfg.backbone.max_pixels, cfg.backbone.trust_remote_code)
    model = BaseRewardModel.from_backbone(path, cfg.head, resolve_dtype(cfg.backbone.dtype),
                                          cfg.backbone.trust_remote_code, seed=cfg.seed)
    if cfg.backbone.freeze_vision:
        freeze_vision_tower(model.backbone)

    trainer = BTTrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                        data_collator=PairCollator(processor, cfg.loss.length_normalize),
                        compute_metrics=compute_pair_metrics, zero_mean_weight=cfg.loss.zero_mean_weight)
    before = trainer.evaluate() if held_out is not None else {}
    result = trainer.train()
    after, by_kind = {}, {}
    if held_out is not None:
        pred = trainer.predict(held_out, metric_key_prefix="eval")
        after = pred.metrics
        if "kind" in held_out.column_names:  # synthetic pairs: hallucination vs near miss
            kinds = held_out["kind"]
            for kind in sorted(set(kinds)):
                rows = [i for i, k in enumerate(kinds) if k == kind]
                by_kind[kind] = pair_metrics([float(pred.predictions[i, 0]) for i in rows],
                                             [float(pred.predictions[i, 1]) for i in rows])["accuracy"]

    # Score statistics on (a slice of) the training pairs, stored for calibration at RL time.
    stats_rows = train.select(range(min(256, len(train))))
    preds = trainer.predict(stats_rows).predictions  # [N, 2]
    scores = preds.reshape(-1)
    model.stats = ScoreStats(float(scores.mean()), float(scores.std() or 1.0))
    final = model.save_pretrained(out / "final", processor)

    summary = {
        "checkpoint": str(final),
        "train_pairs": len(train),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_metrics": pair_metrics(preds[:, 0].tolist(), preds[:, 1].tolist()),
        "eval_before": before,
        "eval_after": after,
        "eval_accuracy_by_kind": by_kind,
        "score_mean": model.stats.mean,
        "score_std": model.stats.std,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if after:
        log.info("held-out pairwise accuracy %.3f (before training %.3f) on %d pairs %s",
                 after["eval_accuracy"], before["eval_accuracy"], len(held_out),
                 " ".join(f"{k}={v:.3f}" for k, v in by_kind.items()))
    log.info("saved the reward model to %s", final)
    return summary


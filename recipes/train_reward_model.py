"""Train a reward model on preference pairs, in either of the paradigms the BaseReward paper compares.

    brl train-rm recipes/configs/tiny_cpu_rm.yaml [key=value ...]
    brl train-rm recipes/configs/tiny_cpu_rm.yaml paradigm=generative

`paradigm: naive` (the default) is BaseReward: a Qwen2.5-VL backbone + MLP head, Bradley-Terry loss; its
checkpoint is what `reward.model.paths` points the GRPO recipes at. `paradigm: generative` trains the same
backbone, on the same pairs, by SFT (TRL's SFTTrainer) to write R1-Reward's verdict: each pair rendered
as a judge prompt in both orders (target `<answer>1</answer>` or `<answer>2</answer>`, a rationale before
it where the data has one), plus single-response prompts; its checkpoint is what `reward.judge.path`
takes. The paper's paradigm ablation is one command per paradigm. Each of its head and loss ablations is
one config change: `head.num_layers`, `head.activation`, `loss.zero_mean_weight`, `loss.length_normalize`,
`data.sources[].weight`. `backbone.extra_layers` deepens the backbone first (block expansion, both paradigms).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainingArguments, set_seed

from policies.expansion import expand_decoder
from policies.loading import freeze_vision_tower, load_policy, load_processor, resolve_dtype
from reward.model import BaseRewardModel, ScoreStats
from reward.train import BTTrainer, PairCollator, compute_pair_metrics, held_out_breakdown, pair_metrics
from rl.config import RMRecipeConfig, load_config, to_yaml
from rl.data import load_preference_mixture
from rl.learner import check_update_precision, device_defaults
from rl.models import resolve_model_path

log = logging.getLogger("brl.train_rm")


def load(path: str | None = None, overrides: Sequence[str] = ()) -> RMRecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `trainer:`
    keys must be fields of transformers' TrainingArguments."""
    return load_config(
        RMRecipeConfig,
        path,
        overrides,
        passthrough={"trainer": TrainingArguments, "generative.trainer": TrainingArguments},
    )


def main(cfg: RMRecipeConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.seed)
    check_update_precision(cfg.backbone, cfg.trainer, "backbone")
    train, held_out = load_preference_mixture(cfg.data)  # data problems surface before anything loads
    path = resolve_model_path(cfg.backbone.path, out, cfg.seed, field="backbone.path")
    processor = load_processor(path, cfg.backbone.max_pixels, cfg.backbone.trust_remote_code)
    if cfg.paradigm == "generative":
        return train_judge(cfg, out, path, processor, train, held_out)
    args = TrainingArguments(
        **{
            **device_defaults(),
            "logging_steps": 10,
            "report_to": ["tensorboard"],
            "save_strategy": "no",
            "eval_strategy": "no",
            "remove_unused_columns": False,
            "label_names": [],
            **cfg.trainer,
            "output_dir": str(out),
            "seed": cfg.seed,
        }
    )
    model = BaseRewardModel.from_backbone(
        path, cfg.head, resolve_dtype(cfg.backbone.dtype), cfg.backbone.trust_remote_code, seed=cfg.seed
    )
    deepen(model.backbone, cfg.backbone.extra_layers)
    if cfg.backbone.freeze_vision:
        freeze_vision_tower(model.backbone)

    trainer = BTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=PairCollator(processor, cfg.loss.length_normalize),
        compute_metrics=compute_pair_metrics,
        zero_mean_weight=cfg.loss.zero_mean_weight,
    )
    trainer.vision_lr = cfg.backbone.vision_lr
    before = trainer.evaluate() if held_out is not None else {}
    result = trainer.train()
    after, breakdown = {}, {}
    if held_out is not None:
        pred = trainer.predict(held_out, metric_key_prefix="eval")
        after = pred.metrics
        breakdown = held_out_breakdown(held_out, pred.predictions[:, 0].tolist(), pred.predictions[:, 1].tolist())

    # Score statistics on (a slice of) the training pairs, stored for calibration at RL time.
    stats_rows = train.select(range(min(256, len(train))))
    preds = trainer.predict(stats_rows).predictions  # [N, 2]
    scores = preds.reshape(-1)
    model.stats = ScoreStats(float(scores.mean()), float(scores.std() or 1.0))
    final = model.save_pretrained(out / "final", processor)

    summary = {
        "paradigm": "naive",
        "checkpoint": str(final),
        "train_pairs": len(train),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_metrics": pair_metrics(preds[:, 0].tolist(), preds[:, 1].tolist()),
        "eval_before": before,
        "eval_after": after,
        "eval_accuracy_by_kind": breakdown.get("eval_accuracy_by_kind", {}),
        "eval_accuracy_by_kind_and_task": breakdown.get("eval_accuracy_by_kind_and_task", {}),
        "score_mean": model.stats.mean,
        "score_std": model.stats.std,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if after:
        log.info(
            "held-out pairwise accuracy %.3f (before training %.3f) on %d pairs %s",
            after["eval_accuracy"],
            before["eval_accuracy"],
            len(held_out),
            " ".join(f"{k}={v:.3f}" for k, v in summary["eval_accuracy_by_kind"].items()),
        )
    log.info("saved the reward model to %s", final)
    return summary


def deepen(model: Any, extra_layers: int) -> None:
    """`backbone.extra_layers`: block expansion of the backbone before training (both paradigms)."""
    if extra_layers:
        depth = expand_decoder(model, extra_layers)
        log.info("backbone deepened by %d zero-output layers to %d (block expansion)", extra_layers, depth)


def train_judge(cfg: RMRecipeConfig, out: Path, path: str, processor: Any, train: Any, held_out: Any) -> dict:
    """`paradigm: generative`: SFT of the backbone to write the judge's verdict on the pairs (see the module
    docstring), then the held-out pairs judged by the result (accuracy, by kind of rejected answer, tokens
    and seconds per pair)."""
    from recipes.sft import PolicySFTTrainer, sft_args
    from reward.judge import JUDGE_FILE, PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE, judge_training_rows

    gen = cfg.generative
    pairwise = Path(gen.template).read_text() if gen.template else PAIRWISE_TEMPLATE.read_text()
    pointwise = Path(gen.pointwise_template).read_text() if gen.pointwise_template else POINTWISE_TEMPLATE.read_text()

    def expand(batch: dict[str, list]) -> dict[str, list]:
        rows = [
            r
            for i in range(len(batch["chosen"]))
            for r in judge_training_rows(
                batch["prompt"][i],
                batch["images"][i] or [],
                batch["chosen"][i],
                batch["rejected"][i],
                pairwise,
                pointwise,
                gen.pointwise,
                (batch.get("rationale") or [None] * len(batch["chosen"]))[i],
            )
        ]
        return {key: [r[key] for r in rows] for key in ("prompt", "images", "completion")}

    rows = train.map(expand, batched=True, remove_columns=train.column_names, desc="judge prompts")
    args = sft_args(out, cfg.seed, cfg.trainer, gen.trainer)
    model = load_policy(path, cfg.backbone.dtype, cfg.backbone.trust_remote_code, cfg.backbone.freeze_vision)
    deepen(model, cfg.backbone.extra_layers)
    trainer = PolicySFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)
    trainer.vision_lr = cfg.backbone.vision_lr
    result = trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    processor.save_pretrained(final)
    (final / JUDGE_FILE).write_text(
        json.dumps({"paradigm": "generative", "pairwise_template": pairwise, "pointwise_template": pointwise}, indent=2)
    )
    summary = {
        "paradigm": "generative",
        "checkpoint": str(final),
        "train_pairs": len(train),
        "train_rows": len(rows),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        **judge_held_out(str(final), held_out, gen.eval_batch_size, pointwise=gen.pointwise),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if held_out is not None:
        after = summary["eval_after"]
        log.info(
            "held-out pairwise accuracy %.3f on %d pairs (%.1f tokens, %.3f s per pair; verdicts for Response 1 "
            "%.1f%%, position consistency %.1f%%) %s",
            after["eval_accuracy"],
            len(held_out),
            after["generated_tokens_per_pair"],
            after["seconds_per_pair"],
            100 * after["eval_first_position_rate"],
            100 * after["eval_position_consistency"],
            " ".join(f"{k}={v:.3f}" for k, v in summary["eval_accuracy_by_kind"].items()),
        )
        if "eval_pointwise_accuracy" in after:
            log.info(
                "held-out pointwise accuracy %.3f %s",
                after["eval_pointwise_accuracy"],
                " ".join(f"{k}={v:.3f}" for k, v in summary["eval_pointwise_accuracy_by_kind"].items()),
            )
    log.info("saved the generative judge to %s", final)
    return summary


def judge_held_out(path: str, held_out: Any, batch_size: int, pointwise: bool = True) -> dict[str, Any]:
    """The judge at `path` on the held-out pairs, as it judges at RL time: pairwise (P(chosen better) > 0.5
    from both orders: the accuracy, by kind of rejected answer, unreadable verdicts, order bias and
    position consistency, the cost per pair) and, for a judge trained on single responses (`pointwise`),
    pointwise (each response alone: P(chosen good) > P(rejected good))."""
    import time
    from dataclasses import replace

    from evaluation.rm_metrics import judge_pairs
    from reward.judge import GenerativeJudge, judge_report
    from reward.options import JudgeOptions

    if held_out is None:
        return {"eval_after": {}, "eval_accuracy_by_kind": {}, "eval_accuracy_by_kind_and_task": {}}
    judge = GenerativeJudge(JudgeOptions(path=path, batch_size=batch_size))
    items = [
        [{"prompt": r["prompt"], "images": r["images"] or [], "response": r[key]} for r in held_out]
        for key in ("chosen", "rejected")
    ]
    start = time.perf_counter()
    chosen, rejected = judge_pairs(judge)(*items)
    seconds = time.perf_counter() - start
    n = len(held_out)
    report = judge_report(judge.metrics(), n)
    out = {
        "eval_after": {
            "eval_accuracy": pair_metrics(chosen, rejected)["accuracy"],
            "eval_unparsed_rate": report["unparsed_rate"],
            "eval_first_position_rate": report["first_position_rate"],
            "eval_position_consistency": report["position_consistency"],
            "seconds_per_pair": seconds / n,
            "generated_tokens_per_pair": report["generated_tokens_per_pair"],
        },
        **held_out_breakdown(held_out, chosen, rejected),
    }
    if pointwise:
        judge.options = replace(judge.options, mode="pointwise")  # the same model, each response on its own
        alone = [
            judge([it["prompt"] for it in part], [it["response"] for it in part], images=[it["images"] for it in part])
            for part in items
        ]
        out["eval_after"]["eval_pointwise_accuracy"] = pair_metrics(*alone)["accuracy"]
        out["eval_pointwise_accuracy_by_kind"] = held_out_breakdown(held_out, *alone)["eval_accuracy_by_kind"]
    return out

"""The anchor: does this project's GRPO learn as well as plain TRL, from the same start, on the same data,
reward, settings and seeds? And at what cost per step?

    python -m benchmarks.trl_anchor [--policy runs/demo/sft/final] [--seeds 0 1 2] [--steps N]
        [--variants trl in-process ray] [--eval-size 160]

Three learners, each from the same starting policy (default: built as `brl demo` builds it), with the demo's
GRPO settings (`recipes/configs/tiny_cpu_compare.yaml`'s `grpo:` section: its data, its `trainer:` section as
the GRPOConfig, the vision encoder frozen) and the rule reward:

- `trl`: plain `trl.GRPOTrainer`: TRL generates and trains in this process; no code of this project in the
  learner or its generation (the model is loaded with transformers, the reward function is the rule matcher);
- `in-process`: `brl grpo` with `ray.enabled: false` (this project's learner, TRL generating);
- `ray`: `brl grpo` on Ray: a rollout actor generates (rollout_func, its logprobs), weights synced every step.

Every final policy is scored on the same held-out rows (greedy and sampled answers, per task family); the
table gives each learner's gain over the start on the closed questions (mean and sample std over seeds), its
gain as a share of plain TRL's, its seconds per optimizer step (the Trainer's own runtime / steps), and the
collapse check (families whose answers collapsed that the start's did not). JSON and markdown in
benchmarks/results/trl_anchor.json (machine and date), or $BRL_BENCH_OUT.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"
VARIANTS = ("trl", "in-process", "ray")
CLOSED = ("color", "count", "position", "shape")


def build_start(work: Path) -> str:
    """The demo's starting policy: the tiny Qwen2.5-VL after `tiny_cpu_sft.yaml`."""
    from recipes import sft
    from rl.tasks.models import make_tiny_policy

    policy = make_tiny_policy(work / "tiny-policy")
    return sft.main(
        sft.load(
            str(CONFIGS / "tiny_cpu_sft.yaml"),
            [f"output_dir={work / 'sft'}", f"policy.path={policy}", "trainer.report_to=[]"],
        )
    )["final_policy"]


def base_config(policy: str, steps: int | None) -> Any:
    """The demo's GRPO run (tiny_cpu_compare.yaml's grpo section) with the rule reward, from `policy`."""
    from recipes import compare

    cfg = compare.load(str(CONFIGS / "tiny_cpu_compare.yaml"), [f"grpo.policy.path={policy}"]).grpo
    cfg.reward.scheme = "rule"
    cfg.trainer["report_to"] = []
    if steps:
        cfg.trainer["max_steps"] = steps
    return cfg


def train_plain_trl(cfg: Any, seed: int, out: Path) -> tuple[str, float]:
    """Plain trl.GRPOTrainer on the config's data, reward and GRPOConfig; returns (final policy, s/step)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed
    from trl import GRPOTrainer

    from reward.rule import RuleMatcher
    from rl.data import load_rl_splits
    from rl.learner import grpo_args

    set_seed(seed)
    matcher = RuleMatcher()

    def rule(prompts: list, completions: list, **columns: Any) -> list[float | None]:  # TRL names it "rule"
        return matcher(prompts, completions, **columns)

    train, _ = load_rl_splits(cfg.data)
    args = grpo_args(str(out), seed, cfg.trainer)  # a plain trl.GRPOConfig: the same one brl grpo builds
    model = AutoModelForImageTextToText.from_pretrained(cfg.policy.path, dtype=torch.float32)
    if cfg.policy.freeze_vision:
        model.model.visual.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(cfg.policy.path)
    trainer = GRPOTrainer(model=model, reward_funcs=[rule], args=args, train_dataset=train, processing_class=processor)
    result = trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    processor.save_pretrained(final)
    return str(final), result.metrics["train_runtime"] / trainer.state.global_step


def train_project(cfg: Any, seed: int, out: Path, on_ray: bool) -> tuple[str, float]:
    """`brl grpo` with the same config, in this process or on Ray actors; returns (final policy, s/step)."""
    from recipes import grpo

    run = copy.deepcopy(cfg)
    run.seed, run.output_dir, run.ray.enabled = seed, str(out), on_ray
    summary = grpo.main(run)
    return summary["final_policy"], summary["train_runtime_s"] / summary["global_step"]


def closed_scores(result: Any) -> dict[str, float]:
    """Greedy and sampled scores averaged over the closed-question families."""
    families = [t for t in CLOSED if t in result.per_task]
    return {
        "greedy": sum(result.per_task[t]["greedy"] for t in families) / len(families),
        "sampled": sum(result.per_task[t]["sampled"] for t in families) / len(families),
    }


def main() -> None:
    from benchmarks.common import report
    from evaluation.held_out import collapsed_tasks, evaluate_policy
    from policies.hf_engine import HFEngine
    from reward.stats import mean_std
    from rl.data import load_rl_splits

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", help="the starting policy (default: built as brl demo builds it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the demo's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--eval-size", type=int, default=160)
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per held-out row")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trl_anchor-"))
    start_policy = args.policy or build_start(work)
    cfg = base_config(start_policy, args.steps)
    _, held_out = load_rl_splits(cfg.data)
    held_out = held_out.select(range(min(args.eval_size, len(held_out))))

    def evaluate(path: str) -> Any:
        return evaluate_policy(
            HFEngine(path), held_out, samples=args.samples, temperature=cfg.trainer.get("temperature", 1.0)
        )

    start = evaluate(start_policy)
    start_closed = closed_scores(start)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            out = work / f"{variant}-seed{seed}"
            began = time.perf_counter()
            final, seconds_per_step = (
                train_plain_trl(cfg, seed, out)
                if variant == "trl"
                else train_project(cfg, seed, out, on_ray=variant == "ray")
            )
            wall = time.perf_counter() - began
            result = evaluate(final)
            scores = closed_scores(result)
            runs[variant].append(
                {
                    "seed": seed,
                    "greedy_gain": scores["greedy"] - start_closed["greedy"],
                    "sampled_gain": scores["sampled"] - start_closed["sampled"],
                    "seconds_per_step": seconds_per_step,
                    "wall_s": wall,
                    "collapsed": collapsed_tasks(start.per_task, result.per_task),
                    "per_task": {
                        t: {"greedy": v["greedy"], "sampled": v["sampled"], "top_share": v["top_share"]}
                        for t, v in result.per_task.items()
                    },
                }
            )
    trl_gain = mean_std([r["sampled_gain"] for r in runs["trl"]], sample=True)[0] if runs.get("trl") else math.nan
    rows = []
    for variant, done in runs.items():
        greedy, greedy_sd = mean_std([r["greedy_gain"] for r in done], sample=True)
        sampled, sampled_sd = mean_std([r["sampled_gain"] for r in done], sample=True)
        step, step_sd = mean_std([r["seconds_per_step"] for r in done], sample=True)
        rows.append(
            {
                "learner": variant,
                "seeds": len(done),
                "closed greedy gain": f"{greedy:+.3f} ± {greedy_sd:.3f}",
                "closed sampled gain": f"{sampled:+.3f} ± {sampled_sd:.3f}",
                "sampled gain / TRL's": sampled / trl_gain if trl_gain and not math.isnan(trl_gain) else math.nan,
                "s/step": f"{step:.3f} ± {step_sd:.3f}",
                "collapsed families": ", ".join(sorted({t for r in done for t in r["collapsed"]})) or "none",
            }
        )
    report(
        "trl_anchor",
        rows,
        {
            "start_policy": start_policy,
            "start_closed": start_closed,
            "held_out_rows": len(held_out),
            "samples_per_row": args.samples,
            "trainer": cfg.trainer,
            "seeds": args.seeds,
            "start_per_task": {
                t: {"greedy": v["greedy"], "sampled": v["sampled"], "top_share": v["top_share"]}
                for t, v in start.per_task.items()
            },
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()

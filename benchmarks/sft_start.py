"""The demo's starting policy over SFT seeds: what it can and cannot do before GRPO, per task family.

    python -m benchmarks.sft_start [--seeds 0 1 2] [--eval-size 400] [--samples 8]

Runs `recipes/configs/tiny_cpu_sft.yaml` (the demo's warm-up) from the offline tiny Qwen2.5-VL once per seed,
then scores each policy on held-out scenes per task family: greedy accuracy, pass@1 (the mean over `samples`
sampled answers a row, at temperature 1: what GRPO optimises) and pass@k (the best of a row's k: what sampling
finds at all, so what GRPO can sharpen). Descriptions: the scene score instead of a match. JSON and markdown
in benchmarks/results/sft_start.{json,md} (machine and date), or $BRL_BENCH_OUT.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def main() -> None:
    from benchmarks.common import report
    from evaluation.held_out import evaluate_policy
    from policies.hf_engine import HFEngine
    from recipes import sft
    from reward.stats import mean_std
    from rl.config import DataConfig
    from rl.data import load_rl_splits
    from rl.tasks.models import make_tiny_policy

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-size", type=int, default=400)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sft_start-"))
    policy = make_tiny_policy(work / "tiny-policy")
    _, held_out = load_rl_splits(DataConfig(source="shapes", train_size=1, eval_size=args.eval_size))
    per_seed = {}
    for seed in args.seeds:
        summary = sft.main(
            sft.load(
                str(CONFIGS / "tiny_cpu_sft.yaml"),
                [
                    f"output_dir={work / f'sft-seed{seed}'}",
                    f"policy.path={policy}",
                    f"seed={seed}",
                    "trainer.report_to=[]",
                ],
            )
        )
        result = evaluate_policy(HFEngine(summary["final_policy"]), held_out, batch_size=64, samples=args.samples)
        per_seed[seed] = {
            t: {k: v[k] for k in ("greedy", "sampled", "pass_at_k", "top_share")} for t, v in result.per_task.items()
        }
    rows = []
    for task in next(iter(per_seed.values())):
        row = {"task": task}
        for metric, label in (("greedy", "greedy"), ("sampled", "pass@1"), ("pass_at_k", f"pass@{args.samples}")):
            values = [per_seed[s][task][metric] for s in args.seeds]
            mean, std = mean_std(values, sample=True)
            row[label] = f"{mean:.3f} ± {std:.3f} (" + " / ".join(f"{v:.3f}" for v in values) + ")"
        rows.append(row)
    report(
        "sft_start",
        rows,
        {
            "seeds": args.seeds,
            "held_out_rows": len(held_out),
            "samples": args.samples,
            "config": "recipes/configs/tiny_cpu_sft.yaml",
            "per_seed": per_seed,
        },
    )


if __name__ == "__main__":
    main()

"""The hybrid reward's scale on the miniature: which settings let the exact-match bonus and the model
branch's ranking reach the policy? Measured side by side, from the same SFT policy and reward model.

    python -m benchmarks.hybrid_settings --policy runs/demo/sft/final --reward-model runs/demo/reward_model/final
        [--steps 120] [--seeds 0 1] [--variants ...]

Each variant is `tiny_cpu_compare.yaml`'s hybrid run (its data, budget and held-out scenes) with a few
settings changed: the model branch calibrated with the checkpoint's score statistics or raw
(`reward.model.calibrate`), groups whose rewards spread by at most `reward.min_group_std` given no
advantage (DAPO's filter) or not, and TRL's `scale_rewards` (group / batch / none). Per variant and seed:
the held-out score of sampled answers per task family and their average, and, from the training log,
the share of flat groups and the reward spread in groups with no right answer. Without --policy /
--reward-model it first builds them as `brl demo` does (minutes).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"
VARIANTS = {  # name -> overrides of the hybrid run
    "raw, group scale": ["grpo.reward.model.calibrate=false", "grpo.trainer.scale_rewards=group"],
    "calibrated, group scale": ["grpo.reward.model.calibrate=true", "grpo.trainer.scale_rewards=group"],
    "calibrated, flat groups zeroed": [
        "grpo.reward.model.calibrate=true",
        "grpo.trainer.scale_rewards=group",
        "grpo.reward.min_group_std=0.05",
    ],
    "calibrated, batch scale": ["grpo.reward.model.calibrate=true", "grpo.trainer.scale_rewards=batch"],
    "calibrated, no scaling": ["grpo.reward.model.calibrate=true", "grpo.trainer.scale_rewards=none"],
}


def build_inputs(work: Path) -> tuple[str, str]:
    """The SFT policy and the tiny BaseReward, as `brl demo` builds them."""
    from recipes import sft, train_reward_model
    from rl.tasks.models import make_tiny_policy

    policy = make_tiny_policy(work / "tiny-policy")
    warm = sft.main(
        sft.load(
            str(CONFIGS / "tiny_cpu_sft.yaml"),
            [f"output_dir={work / 'sft'}", f"policy.path={policy}", "trainer.report_to=[]"],
        )
    )["final_policy"]
    rm = train_reward_model.main(
        train_reward_model.load(
            str(CONFIGS / "tiny_cpu_rm.yaml"),
            [f"output_dir={work / 'rm'}", f"backbone.path={warm}", "trainer.report_to=[]"],
        )
    )["checkpoint"]
    return warm, rm


def main() -> None:
    from benchmarks.common import report
    from recipes import compare

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", help="the SFT policy (default: built as brl demo builds it)")
    parser.add_argument("--reward-model", help="the tiny BaseReward (default: built as brl demo builds it)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--eval-size", type=int, default=160)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    policy, rm = (args.policy, args.reward_model) if args.policy and args.reward_model else build_inputs(work)
    rows = []
    for name in args.variants:
        cfg = compare.load(
            str(CONFIGS / "tiny_cpu_compare.yaml"),
            [
                f"output_dir={work / name.replace(', ', '_').replace(' ', '-')}",
                "schemes=[hybrid]",
                f"seeds={list(args.seeds)}",
                f"grpo.policy.path={policy}",
                f"grpo.reward.model.paths=[{rm}]",
                f"grpo.trainer.max_steps={args.steps}",
                f"eval.size={args.eval_size}",
                f"eval.every={args.steps}",
                *VARIANTS[name],
            ],
        )
        results = compare.main(copy.deepcopy(cfg))
        for run in results["schemes"]["hybrid"]:
            final, mech = run["final"], run["mechanism"]
            rows.append(
                {
                    "variant": name,
                    "seed": run["seed"],
                    **{t: v["sampled"] for t, v in final["per_task"].items()},
                    "average": final["sampled_task_average"],
                    "average, greedy": final["task_average"],
                    "flat groups": mech.get("rewards/flat_groups"),
                    "reward std, all-wrong groups": mech.get("hybrid/all_wrong_group_std"),
                    "RM score right - wrong": (run["model_score"] or {}).get("right_mean", float("nan"))
                    - (run["model_score"] or {}).get("wrong_mean", float("nan")),
                }
            )
        start = results["start"]
    rows.insert(
        0,
        {
            "variant": "starting policy (SFT)",
            "seed": "-",
            **{t: v["sampled"] for t, v in start["per_task"].items()},
            "average": start["sampled_task_average"],
            "average, greedy": start["task_average"],
        },
    )
    report(
        "hybrid_settings",
        rows,
        {
            "steps": args.steps,
            "seeds": list(args.seeds),
            "policy": policy,
            "reward_model": rm,
            "variants": {k: VARIANTS[k] for k in args.variants},
        },
    )


if __name__ == "__main__":
    main()

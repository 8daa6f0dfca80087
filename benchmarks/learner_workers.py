"""A learner on one worker vs two (DDP, FSDP2, DeepSpeed ZeRO-3) on the same global batch: do they train the
same weights?

    python -m benchmarks.learner_workers [--steps 10] [--strategies ddp fsdp deepspeed] [--sft-steps 120]

Runs recipes/configs/tiny_cpu_two_learners.yaml (the tiny policy after a short SFT warm-up, the rule
reward, one rollout actor) as given and with `learner.num_workers=1` on a per-worker batch twice as
large. Rank 0 generates for all workers, so every run trains on the same rollouts; what may differ
is the order in which the gradients are summed. Per run: seconds per step, whether the reward curve
equals the one-worker run's, and for the final weights the largest `|w - w_1| / |w_1 - w_start|` over
the trained tensors (the difference to the one-worker run, relative to how far that run moved them).
On a 2-core machine the workers share the cores: the times show the cost of the split, not a speed-up.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

CONFIG = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_two_learners.yaml"


def run(policy: str, steps: int, workers: int, strategy: str) -> dict:
    """One GRPO run of the config with the global batch of 8 rollouts split over `workers`."""
    from recipes import grpo

    overrides = [
        f"output_dir={tempfile.mkdtemp()}",
        f"policy.path={policy}",
        f"trainer.max_steps={steps}",
        f"learner.num_workers={workers}",
        f"learner.strategy={strategy}",
        f"trainer.per_device_train_batch_size={8 // workers}",
        "trainer.report_to=[]",
    ]
    return grpo.main(grpo.load(str(CONFIG), overrides))


def weights(summary: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(summary["final_policy"]) / "model.safetensors")


def largest_relative_difference(one: dict, other: dict, start: dict) -> float:
    """max over trained tensors of |other - one| / |one - start| (0.0 when they are identical)."""
    worst = 0.0
    for name, w in one.items():
        moved = (w - start[name]).norm().item()
        if moved > 0:
            worst = max(worst, (other[name] - w).norm().item() / moved)
    return worst


def main() -> None:
    from rl.config import LEARNER_STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategies", nargs="+", default=list(LEARNER_STRATEGIES), choices=LEARNER_STRATEGIES)
    parser.add_argument("--sft-steps", type=int, default=120, help="SFT warm-up of the tiny policy")
    args = parser.parse_args()

    from safetensors.torch import load_file

    from benchmarks.common import report, warm_policy

    policy = warm_policy(args.sft_steps)
    start = load_file(Path(policy) / "model.safetensors")
    one = run(policy, args.steps, 1, "ddp")
    one_weights, one_rewards = weights(one), [r["reward"] for r in one["log_history"] if "reward" in r]
    rows = [
        {
            "learner": "1 worker, 8 rollouts",
            "s_per_step": one["train_runtime_s"] / args.steps,
            "same_rewards": True,
            "max_rel_weight_diff": 0.0,
        }
    ]
    for strategy in args.strategies:
        two = run(policy, args.steps, 2, strategy)
        rewards = [r["reward"] for r in two["log_history"] if "reward" in r]
        rows.append(
            {
                "learner": f"2 workers, {strategy}, 4 rollouts each",
                "s_per_step": two["train_runtime_s"] / args.steps,
                "same_rewards": len(rewards) == len(one_rewards)
                and all(abs(a - b) <= 1e-6 for a, b in zip(rewards, one_rewards)),
                "max_rel_weight_diff": largest_relative_difference(one_weights, weights(two), start),
            }
        )
    moved = any(not one_weights[k].equal(start[k]) for k in start)
    report(
        "learner_workers",
        rows,
        {
            "config": str(CONFIG.relative_to(CONFIG.parents[2])),
            "steps": args.steps,
            "sft_steps": args.sft_steps,
            "policy_trained": moved,
            "targets": {"max_rel_weight_diff": "<= 1e-3 (float summation order only)"},
        },
    )


if __name__ == "__main__":
    main()

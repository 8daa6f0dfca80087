"""Pipeline overhead: seconds per GRPO step of this pipeline (a Ray rollout actor with the
transformers backend + the rule reward on its own actor + TRL learner + weight sync every step)
versus plain TRL GRPOTrainer in one process, on the same tiny policy, data, batch, group size, seed;
and the pipeline with overlapped rollouts (step t+1 generated while step t trains), whose reward
curve is recorded beside the synchronous one.

    python -m benchmarks.pipeline_overhead [--steps 30]

On a 2-core machine the actors and the learner share the same two cores, so this measures the
overhead of the split (serialisation, the object store, weight sync), not a speed-up.
"""

from __future__ import annotations

import argparse
import tempfile


def plain_trl(policy: str, steps: int, trainer_kwargs: dict) -> float:
    from trl import GRPOConfig, GRPOTrainer

    from policies.loading import load_policy, load_processor
    from reward.rule import RuleMatcher
    from rl.tasks.shapes import make_shapes_dataset

    args = GRPOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, use_cpu=True, bf16=False, report_to=[],
                      logging_steps=1, save_strategy="no", seed=0, **trainer_kwargs)
    trainer = GRPOTrainer(model=load_policy(policy), reward_funcs=[RuleMatcher()], args=args,
                          train_dataset=make_shapes_dataset(1024, seed=0), processing_class=load_processor(policy))
    return trainer.train().metrics["train_runtime"] / steps


def pipeline(policy: str, steps: int, trainer_kwargs: dict, overlap: bool = False) -> tuple[float, list[float]]:
    from recipes import grpo
    from rl.cli import load_recipe_config

    overrides = [f"output_dir={tempfile.mkdtemp()}", f"policy.path={policy}", "data.train_size=1024",
                 "reward.scheme=rule", "reward.rule.in_actor=true", "ray.enabled=true", "ray.num_cpus=3",
                 "rollout.actors.num_actors=1", "rollout.actors.num_cpus=1", f"trainer.max_steps={steps}",
                 "trainer.report_to=[]"] + [f"trainer.{k}={v}" for k, v in trainer_kwargs.items()]
    if overlap:
        overrides += ["rollout.overlap=true", "rollout.max_staleness=1"]
    summary = grpo.main(load_recipe_config("grpo", None, overrides))
    rewards = [r["reward"] for r in summary["log_history"] if "reward" in r]
    return summary["train_runtime_s"] / steps, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from benchmarks.common import report
    from policies.tiny import make_tiny_qwen2_5_vl

    policy = str(make_tiny_qwen2_5_vl(tempfile.mkdtemp()))
    trainer_kwargs = {"per_device_train_batch_size": 16, "num_generations": 8, "max_completion_length": 8,
                      "learning_rate": 1e-4, "beta": 0.0}
    # Same process, one after the other: the ratio is what to read, not the absolute seconds.
    t_trl = plain_trl(policy, args.steps, trainer_kwargs)
    t_ours, r_sync = pipeline(policy, args.steps, trainer_kwargs)
    t_overlap, r_overlap = pipeline(policy, args.steps, trainer_kwargs, overlap=True)
    tail = max(1, args.steps // 3)

    def last(rewards: list[float]) -> float:
        return sum(rewards[-tail:]) / len(rewards[-tail:])

    rows = [{"setup": "plain TRL GRPOTrainer, one process", "s_per_step": t_trl, "ratio": 1.0, "reward_last_third": "-"},
            {"setup": "this pipeline: Ray rollout actor + rule actor + weight sync", "s_per_step": t_ours,
             "ratio": t_ours / t_trl, "reward_last_third": last(r_sync)},
            {"setup": "this pipeline, overlapped rollouts (one step off-policy)", "s_per_step": t_overlap,
             "ratio": t_overlap / t_trl, "reward_last_third": last(r_overlap)}]
    report("pipeline_overhead", rows, {"steps": args.steps, **trainer_kwargs,
                                       "reward_curves": {"sync": r_sync, "overlap": r_overlap},
                                       "targets": {"ratio": "<= 1.15 (sync), < 1.0 (overlap)"}})


if __name__ == "__main__":
    main()

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
import statistics
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

    overrides = [f"output_dir={tempfile.mkdtemp()}", f"policy.path={policy}", "data.train_size=1024",
                 "reward.scheme=rule", "reward.rule.in_actor=true", "ray.enabled=true", "ray.num_cpus=3",
                 "rollout.actors.num_actors=1", "rollout.actors.num_cpus=1", f"trainer.max_steps={steps}",
                 "rollout.logprob_gap_samples=0",  # a diagnostic plain TRL does not run: off for the comparison
                 "trainer.report_to=[]"] + [f"trainer.{k}={v}" for k, v in trainer_kwargs.items()]
    if overlap:
        overrides += ["rollout.overlap=true", "rollout.max_staleness=1"]
    summary = grpo.main(grpo.load(None, overrides))
    rewards = [r["reward"] for r in summary["log_history"] if "reward" in r]
    return summary["train_runtime_s"] / steps, rewards


def warm_policy(sft_steps: int) -> str:
    """The tiny policy after the tests' short SFT warm-up: it answers in the task's format, so the
    rule reward has variance and the reward curves mean something."""
    from rl.tasks.shapes import make_tiny_policy
    from recipes import sft
    from rl.config import SFTRecipeConfig, load_config

    base = str(make_tiny_policy(tempfile.mkdtemp()))
    cfg = load_config(SFTRecipeConfig, None, [f"output_dir={tempfile.mkdtemp()}", f"policy.path={base}",
                                              "data.train_size=512", f"trainer.max_steps={sft_steps}",
                                              "trainer.per_device_train_batch_size=32", "trainer.learning_rate=1e-3",
                                              "policy.freeze_vision=true", "trainer.report_to=[]"])
    return sft.main(cfg)["final_policy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sft-steps", type=int, default=120, help="SFT warm-up of the tiny policy")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from benchmarks.common import report

    policy = warm_policy(args.sft_steps)
    trainer_kwargs = {"per_device_train_batch_size": 16, "num_generations": 8, "max_completion_length": 8,
                      "learning_rate": 1e-4, "beta": 0.0}
    # Same process, interleaved (plain, sync, overlap, plain, ...) `repeats` times; the median of each
    # is reported, so a burst of load from elsewhere on this shared machine hits all three alike.
    times: dict[str, list[float]] = {"trl": [], "sync": [], "overlap": []}
    for _ in range(args.repeats):
        times["trl"].append(plain_trl(policy, args.steps, trainer_kwargs))
        t, r_sync = pipeline(policy, args.steps, trainer_kwargs)
        times["sync"].append(t)
        t, r_overlap = pipeline(policy, args.steps, trainer_kwargs, overlap=True)
        times["overlap"].append(t)
    t_trl, t_ours, t_overlap = (statistics.median(times[k]) for k in ("trl", "sync", "overlap"))
    tail = max(1, args.steps // 3)

    def last(rewards: list[float]) -> float:
        return sum(rewards[-tail:]) / len(rewards[-tail:])

    rows = [{"setup": "plain TRL GRPOTrainer, one process", "s_per_step": t_trl, "ratio": 1.0, "reward_last_third": "-"},
            {"setup": "this pipeline: Ray rollout actor + rule actor + weight sync", "s_per_step": t_ours,
             "ratio": t_ours / t_trl, "reward_last_third": last(r_sync)},
            {"setup": "this pipeline, overlapped rollouts (one step off-policy)", "s_per_step": t_overlap,
             "ratio": t_overlap / t_trl, "reward_last_third": last(r_overlap)}]
    report("pipeline_overhead", rows, {"steps": args.steps, **trainer_kwargs,
                                       "repeats": args.repeats, "s_per_step_all": times,
                                       "reward_curves": {"sync": r_sync, "overlap": r_overlap},
                                       "targets": {"ratio": "<= 1.15 (sync), < 1.0 (overlap)"}})


if __name__ == "__main__":
    main()

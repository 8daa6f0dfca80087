"""Pipeline overhead: seconds per GRPO step of this pipeline (a Ray rollout actor with the
transformers backend + the rule reward on its own actor + TRL learner + weight sync every step)
versus plain TRL GRPOTrainer in one process, on the same policy, data, batch, group size, seed; the
pipeline with overlapped rollouts (step t+1 generated while step t trains), whose reward curve is
recorded beside the synchronous one; and the colocated engine (generation on the learner's model).

    python -m benchmarks.pipeline_overhead [--steps 30] [--size tiny|3b]

tiny (CPU): the test policy after a short SFT warm-up. On a 2-core machine the actors and the learner
share the same two cores, so this measures the overhead of the split, not a speed-up. 3b (one GPU,
../shared/gpu/README.md): a random-weight Qwen2.5-VL-3B of the real shapes, 64 rollouts x 128 tokens
per step, float32 masters with bf16 compute; the learner and the rollout actor share the GPU
(0.7 / 0.3), so weights reach the actor through CUDA IPC; plain TRL generates with the same engine
(transformers `generate`) in its own process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile


def plain_trl(policy: str, steps: int, trainer_kwargs: dict, gpu: bool) -> float:
    from trl import GRPOConfig, GRPOTrainer

    from policies.loading import load_policy, load_processor
    from reward.rule import RuleMatcher
    from rl.tasks.shapes import make_shapes_dataset

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        use_cpu=not gpu,
        bf16=gpu,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **trainer_kwargs,
    )
    model = load_policy(policy, "float32", freeze_vision=gpu)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[RuleMatcher()],
        args=args,
        train_dataset=make_shapes_dataset(1024, seed=0),
        processing_class=load_processor(policy),
    )
    return trainer.train().metrics["train_runtime"] / steps


SETUPS = {  # the pipeline's variants, as config overrides
    "sync": [],
    "overlap": ["rollout.overlap=true", "rollout.max_staleness=1"],
    "colocated": ["rollout.colocate=true"],
}
GPU = [
    "learner.gpus_per_worker=0.7",
    "rollout.actors.num_gpus=0.3",
    "policy.dtype=float32",
    "rollout.dtype=bfloat16",
    "policy.freeze_vision=true",
    "trainer.bf16=true",
    "trainer.gradient_checkpointing=true",
]


def pipeline(policy: str, steps: int, trainer_kwargs: dict, setup: str, gpu: bool) -> tuple[float, list[float]]:
    from recipes import grpo

    overrides = [
        f"output_dir={tempfile.mkdtemp()}",
        f"policy.path={policy}",
        "data.train_size=1024",
        "reward.scheme=rule",
        "reward.actors.rule.num_actors=1",
        "ray.enabled=true",
        "ray.num_cpus=3",
        "rollout.actors.num_actors=1",
        "rollout.actors.num_cpus=1",
        f"trainer.max_steps={steps}",
        "rollout.logprob_gap_samples=0",  # a diagnostic plain TRL does not run: off for the comparison
        "trainer.report_to=[]",
    ] + [f"trainer.{k}={v}" for k, v in trainer_kwargs.items()]
    summary = grpo.main(grpo.load(None, overrides + SETUPS[setup] + (GPU if gpu else [])))
    rewards = [r["reward"] for r in summary["log_history"] if "reward" in r]
    return summary["train_runtime_s"] / steps, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="tiny", choices=["tiny", "3b"])
    parser.add_argument("--sft-steps", type=int, default=120, help="SFT warm-up of the tiny policy")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from benchmarks.common import report, warm_policy

    gpu = args.size == "3b"
    if gpu:
        from rl.tasks.models import make_real_shape_model

        policy = str(make_real_shape_model("Qwen/Qwen2.5-VL-3B-Instruct", tempfile.mkdtemp()))
        trainer_kwargs = {
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 8,
            "num_generations": 8,
            "max_completion_length": 128,
            "learning_rate": 1e-6,
            "beta": 0.0,
        }
    else:
        policy = warm_policy(args.sft_steps)
        trainer_kwargs = {
            "per_device_train_batch_size": 16,
            "num_generations": 8,
            "max_completion_length": 8,
            "learning_rate": 1e-4,
            "beta": 0.0,
        }
    # Same process, interleaved (plain, sync, overlap, colocated, plain, ...) `repeats` times; the median of
    # each is reported, so a burst of load from elsewhere on this shared machine hits them all alike.
    times: dict[str, list[float]] = {"trl": [], **{name: [] for name in SETUPS}}
    curves: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        times["trl"].append(plain_trl(policy, args.steps, trainer_kwargs, gpu))
        for name in SETUPS:
            t, curves[name] = pipeline(policy, args.steps, trainer_kwargs, name, gpu)
            times[name].append(t)
    median = {k: statistics.median(v) for k, v in times.items()}
    tail = max(1, args.steps // 3)

    def last(rewards: list[float]) -> float:
        return sum(rewards[-tail:]) / len(rewards[-tail:])

    labels = {
        "sync": "this pipeline: Ray rollout actor + rule actor + weight sync",
        "overlap": "this pipeline, overlapped rollouts (one step off-policy)",
        "colocated": "this pipeline, colocated engine (generates on the learner's model; no sync)",
    }
    rows = [
        {
            "setup": "plain TRL GRPOTrainer, one process",
            "s_per_step": median["trl"],
            "ratio": 1.0,
            "reward_last_third": "-",
        }
    ]
    rows += [
        {
            "setup": labels[name],
            "s_per_step": median[name],
            "ratio": median[name] / median["trl"],
            "reward_last_third": last(curves[name]),
        }
        for name in SETUPS
    ]
    report(
        "pipeline_overhead" if not gpu else f"pipeline_overhead_{args.size}",
        rows,
        {
            "size": args.size,
            "steps": args.steps,
            **trainer_kwargs,
            "repeats": args.repeats,
            "s_per_step_all": times,
            "reward_curves": curves,
            "targets": {"ratio": "<= 1.0 (sync, same GPU), < 1.0 (overlap)"},
        },
    )


if __name__ == "__main__":
    main()

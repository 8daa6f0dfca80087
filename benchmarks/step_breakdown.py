"""Step-time breakdown of the Ray pipeline: generate / weight sync / reward / learner, per model size.

    python -m benchmarks.step_breakdown [--steps 8] [--sizes tiny mid]

Runs the GRPO recipe with a rollout actor (transformers backend), the hybrid reward (rule + a
reward model on its own actor) and weight sync every step, and splits each step's wall time
with the recipe's own per-step metrics; the step itself is timed from the Trainer's step-begin to
step-end callbacks (everything the step does). "learner" is the rest of the step: TRL's log-prob
forwards, loss, backward and optimizer step, plus its bookkeeping. The first two steps (warm-up: lazy
inits, and the first sync setting up its transport) are left out; the first sync is reported alone.

Sizes: "tiny" is the test policy (hidden 128, 2 layers); "mid" is the same architecture scaled to a
few hundred million parameters (hidden 1024, 16 layers), still on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from transformers import TrainerCallback

from benchmarks.common import POLICY_SIZES, report

WARMUP_STEPS = 2


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from the Trainer's own callbacks."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def run(size: str, steps: int, rm_path: str) -> dict:
    from policies.loading import load_policy
    from recipes import grpo
    from rl.tasks.models import make_tiny_policy

    policy = make_tiny_policy(tempfile.mkdtemp(), text=POLICY_SIZES[size])
    params = sum(p.numel() for p in load_policy(str(policy)).parameters())
    overrides = [
        f"output_dir={tempfile.mkdtemp()}",
        f"policy.path={policy}",
        "data.train_size=256",
        "reward.scheme=hybrid",
        f"reward.model.paths=[{rm_path}]",
        "reward.actors.model.num_cpus=0.5",
        "ray.enabled=true",
        "ray.num_cpus=3",
        "rollout.actors.num_cpus=1",
        "rollout.logprob_gap_samples=0",
        f"trainer.max_steps={steps}",
        "trainer.per_device_train_batch_size=16",
        "trainer.num_generations=8",
        "trainer.max_completion_length=8",
        "trainer.learning_rate=1e-5",
        "trainer.beta=0.0",
        "trainer.report_to=[]",
    ]
    timer = StepTimer()
    summary = grpo.main(grpo.load(None, overrides), callbacks=[timer])
    rows = [r for r in summary["log_history"] if "timing/generate" in r]
    first_sync = rows[1].get("timing/weight_sync", 0.0)
    # Warm-up left out: step 1 (lazy inits) and step 2 (the first sync, which sets up the transport:
    # shared-memory files mapped, process groups formed; reported on its own as first_sync_s).
    rows = rows[WARMUP_STEPS:]

    def mean(key: str) -> float:
        return statistics.mean(r.get(key, 0.0) for r in rows)

    step = statistics.mean(timer.seconds[WARMUP_STEPS:])
    parts = {
        "generate": mean("timing/generate"),
        "weight_sync": mean("timing/weight_sync"),
        "reward": sum(mean(k) for k in rows[0] if k.startswith("timing/reward/")),
    }
    parts["learner"] = step - sum(parts.values())
    return {
        "size": size,
        "params_M": params / 1e6,
        "s_per_step": step,
        **{f"{k}_s": v for k, v in parts.items()},
        **{f"{k}_share": v / step for k, v in parts.items()},
        "first_sync_s": first_sync,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sizes", nargs="+", default=list(POLICY_SIZES), choices=list(POLICY_SIZES))
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps left out of the timing")

    from policies.loading import load_processor
    from reward.model import BaseRewardModel, HeadConfig
    from rl.tasks.models import make_tiny_policy

    backbone = str(make_tiny_policy(tempfile.mkdtemp()))
    rm = str(
        BaseRewardModel.from_backbone(backbone, HeadConfig(), seed=0).save_pretrained(
            tempfile.mkdtemp(), load_processor(backbone)
        )
    )
    rows = [run(size, args.steps, rm) for size in args.sizes]
    report(
        "step_breakdown",
        rows,
        {
            "steps": args.steps,
            "rollouts_per_step": 16,
            "completion_tokens": 8,
            "reward": "hybrid (rule + tiny reward-model actor)",
            "sync_every": 1,
        },
    )


if __name__ == "__main__":
    main()

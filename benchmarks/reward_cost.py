"""Reward cost: BaseReward scoring batched vs one sample per call, vs a generative judge that must
write a k-token verdict on the same backbone (the paper's efficiency argument), and rule-matcher
throughput, side by side in one run. Samples come as GRPO scores them: G completions per prompt.

    python -m benchmarks.reward_cost [--prompts 8] [--group 8] [--verdict-tokens 32 256]

CPU: the tiny offline Qwen2.5-VL (56 x 56 images). GPU (../shared/gpu/README.md): `--size 7b` builds
random-weight BaseReward-7B and Qwen2.5-VL-7B judge models of the real shapes, 448 x 448 images (256
vision tokens) and ~80-token answers, bfloat16.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

from benchmarks.common import best_of, report

REAL = "Qwen/Qwen2.5-VL-7B-Instruct"


def build(size: str, tmp: str) -> tuple[str, str]:
    """(reward model, judge policy) checkpoints on the same backbone."""
    from rl.tasks.models import make_real_shape_model, make_tiny_policy

    if size == "7b":
        return (
            str(make_real_shape_model(REAL, f"{tmp}/rm", reward_model=True)),
            str(make_real_shape_model(REAL, f"{tmp}/judge")),
        )
    from policies.loading import load_processor
    from reward.model import BaseRewardModel, HeadConfig

    policy = str(make_tiny_policy(f"{tmp}/policy"))
    rm = BaseRewardModel.from_backbone(policy, HeadConfig(), seed=0).save_pretrained(
        f"{tmp}/rm", load_processor(policy)
    )
    return str(rm), policy


def samples(prompts: int, group: int, size: str) -> tuple[list, list, list]:
    """`prompts` prompts with their images, each with `group` completions of different lengths."""
    import numpy as np
    from PIL import Image

    from rl.tasks.shapes import make_shapes_dataset

    rows = make_shapes_dataset(prompts, seed=0)
    words = 70 if size == "7b" else 6  # ~80 tokens, or a short answer for the tiny model
    out_prompts, out_completions, out_images = [], [], []
    for prompt, images, answer in zip(rows["prompt"], rows["images"], rows["answer"]):
        if size == "7b":
            pixels = np.random.default_rng(len(out_prompts)).integers(0, 255, (448, 448, 3), dtype="uint8")
            images = [Image.fromarray(pixels)]
        for k in range(group):
            filler = " ".join(["the picture shows it"] * ((words * (k + 1)) // (4 * group)))
            out_prompts.append(prompt)
            out_completions.append(f"{filler} It is {answer}.".strip())
            out_images.append(images)
    return out_prompts, out_completions, out_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "7b"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO's G)")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[32, 64],
        help="the scorer's batch sizes timed (the first is also the plain path's and the judge's)",
    )
    parser.add_argument("--verdict-tokens", type=int, nargs="+", default=[32, 256])
    parser.add_argument(
        "--repeats", type=int, default=7, help="rounds of the scorer's timings (the judge: at most 3 runs)"
    )
    args = parser.parse_args()

    import torch

    from policies.hf_engine import HFEngine
    from policies.rollout_engine import RolloutRequest, SamplingParams
    from reward.rule import RuleMatcher
    from reward.scorer import RewardModelOptions, RewardModelScorer

    tmp = tempfile.mkdtemp()
    rm, judge_path = build(args.size, tmp)
    prompts, completions, images = samples(args.prompts, args.group, args.size)
    n = len(prompts)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(fn: Callable[[], None], repeats: int = args.repeats) -> float:
        return best_of(lambda: (fn(), sync()), repeats=repeats)

    batch_size = args.batch_sizes[0]  # the reference: ratios are to this batched path
    scorer = RewardModelScorer.from_paths([rm])  # one model, its options changed between timings
    fast = dataclasses.replace(scorer.options)
    plain = dataclasses.replace(
        fast, batch_size=batch_size, prefetch=False, sort_by_length=False, encode_images_once=False
    )

    def configure(options: RewardModelOptions, **changes: Any) -> None:
        scorer.options = dataclasses.replace(options, **changes)
        scorer.backends[0].encode_images_once = scorer.options.encode_images_once

    def score_all() -> None:
        scorer(prompts, completions, images=images)

    def one_per_call() -> None:
        for p, c, i in zip(prompts, completions, images, strict=True):
            scorer([p], [c], images=[i])

    # Every BaseReward variant is timed once per round, rounds repeated: a slow spell of this shared
    # machine then hits all of them alike instead of skewing one ratio (medians over the rounds).
    variants = {
        **{
            f"BaseReward, batches of {size} (length-sorted, each image processed and encoded once, prefetch on GPUs)": (
                dict(options=fast, batch_size=size),
                score_all,
            )
            for size in args.batch_sizes
        },
        f"BaseReward, batches of {batch_size}, plain": (dict(options=plain), score_all),
        "BaseReward, one per call": (dict(options=plain, batch_size=1), one_per_call),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (options, fn) in variants.items():
            configure(**options)
            # Each timing keeps its warm-up run: timed right after another variant, a variant is
            # noisier (one warm-up round instead gave 4.3-5.0x over three runs, this 4.8-5.0x).
            times[name].append(timed(fn, repeats=1))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    t_batched = next(iter(seconds.values()))
    rows = [
        {"method": name, "samples_per_s": n / t, "x_slower_than_batched": t / t_batched} for name, t in seconds.items()
    ]
    scorer.backends.clear()  # frees the model before the judge loads
    # A generative judge on the same backbone: it reads the same prompt + answer and must write a
    # verdict of k tokens before a score exists (R1-Reward-style judges write hundreds), batched the same way.
    judge = HFEngine(judge_path, dtype="bfloat16" if args.size == "7b" else "float32")
    requests = [
        RolloutRequest(p + [{"role": "assistant", "content": c}, {"role": "user", "content": "Judge it."}], i)
        for p, c, i in zip(prompts, completions, images)
    ]
    for k in args.verdict_tokens:
        # min_tokens: an untrained judge would stop early; the argument is about a k-token verdict.
        verdict = SamplingParams(n=1, temperature=0.0, max_tokens=k, min_tokens=k, logprobs=False)

        def run_judge(verdict: SamplingParams = verdict) -> None:
            for start in range(0, n, batch_size):
                judge.generate(requests[start : start + batch_size], verdict)

        t_judge = timed(run_judge, repeats=min(3, args.repeats))
        rows.append(
            {
                "method": f"generative judge, {k}-token verdict",
                "samples_per_s": n / t_judge,
                "x_slower_than_batched": t_judge / t_batched,
            }
        )

    matcher = RuleMatcher()
    answers = [c.rsplit(" ", 1)[-1].rstrip(".") for c in completions] * 50
    many = completions * 50
    t_rule = best_of(lambda: matcher(["q"] * len(many), many, answer=answers), repeats=5)
    rows.append(
        {
            "method": "rule matcher",
            "samples_per_s": len(many) / t_rule,
            "x_slower_than_batched": t_rule / len(many) * n / t_batched,
        }
    )
    report(
        "reward_cost" if args.size == "tiny" else f"reward_cost_{args.size}",
        rows,
        {
            "size": args.size,
            "samples": n,
            "prompts": args.prompts,
            "group": args.group,
            "batch_sizes": args.batch_sizes,
            "verdict_tokens": args.verdict_tokens,
            "targets": {
                "one per call / batched": ">= 5",
                "256-token judge / batched": ">= 10",
                "7b batched samples_per_s (H100)": ">= 80",
            },
        },
    )


if __name__ == "__main__":
    main()

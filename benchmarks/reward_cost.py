"""Reward cost: BaseReward scoring batched vs one sample per call, vs a generative judge that must
write a k-token verdict on the same backbone (the paper's efficiency argument), and rule-matcher
throughput. All on the tiny offline Qwen2.5-VL, side by side in one run.

    python -m benchmarks.reward_cost [--samples 64] [--verdict-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile

from benchmarks.common import best_of, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--verdict-tokens", type=int, default=32)
    args = parser.parse_args()

    from policies.rollout_engine import RolloutRequest, SamplingParams
    from policies.hf_engine import HFEngine
    from policies.loading import load_processor
    from rl.tasks.shapes import make_tiny_policy
    from reward.model import BaseRewardModel, HeadConfig
    from reward.rule import RuleMatcher
    from reward.scorer import BaseRewardScorer
    from rl.tasks.shapes import make_shapes_dataset

    tmp = tempfile.mkdtemp()
    policy = make_tiny_policy(f"{tmp}/policy")
    rm = BaseRewardModel.from_backbone(str(policy), HeadConfig(), seed=0).save_pretrained(
        f"{tmp}/rm", load_processor(str(policy)))
    rows = make_shapes_dataset(args.samples, seed=0)
    prompts, images = list(rows["prompt"]), list(rows["images"])
    completions = [f"It is {a}." for a in rows["answer"]]
    n = args.samples

    batched = BaseRewardScorer.from_paths([str(rm)], batch_size=args.batch_size)
    single = BaseRewardScorer.from_paths([str(rm)], batch_size=1)
    t_batched = best_of(lambda: batched(prompts, completions, images=images), repeats=3)
    t_single = best_of(lambda: [single([p], [c], images=[i]) for p, c, i in zip(prompts, completions, images)],
                       repeats=3)

    # A generative judge on the same backbone: it reads the same prompt + answer and must write a
    # verdict of k tokens before a score exists (R1-Reward style), batched the same way.
    judge = HFEngine(str(policy))
    judge_requests = [RolloutRequest(p + [{"role": "assistant", "content": c},
                                          {"role": "user", "content": "Judge the answer."}], i)
                      for p, c, i in zip(prompts, completions, images)]
    # min_tokens: the untrained tiny judge would stop early; the argument is about a k-token verdict.
    verdict = SamplingParams(n=1, temperature=0.0, max_tokens=args.verdict_tokens, min_tokens=args.verdict_tokens)

    def run_judge() -> None:
        for start in range(0, n, args.batch_size):
            judge.generate(judge_requests[start:start + args.batch_size], verdict)

    t_judge = best_of(run_judge, repeats=3)

    matcher = RuleMatcher()
    answers = list(rows["answer"]) * 50
    many = completions * 50
    t_rule = best_of(lambda: matcher(["q"] * len(many), many, answer=answers), repeats=5)

    result_rows = [
        {"method": "BaseReward, batched", "samples_per_s": n / t_batched, "ratio_vs_batched": 1.0},
        {"method": "BaseReward, one per call", "samples_per_s": n / t_single, "ratio_vs_batched": t_single / t_batched},
        {"method": f"generative judge, {args.verdict_tokens}-token verdict", "samples_per_s": n / t_judge,
         "ratio_vs_batched": t_judge / t_batched},
        {"method": "rule matcher", "samples_per_s": len(many) / t_rule, "ratio_vs_batched": t_rule / len(many) * n / t_batched},
    ]
    report("reward_cost", result_rows, {"samples": n, "batch_size": args.batch_size,
                                        "verdict_tokens": args.verdict_tokens,
                                        "targets": {"batched_vs_single": ">= 5x"}})


if __name__ == "__main__":
    main()

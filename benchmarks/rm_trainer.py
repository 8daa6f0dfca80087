"""Reward-model training throughput: our BTTrainer (BaseReward: backbone + 2-layer MLP head) versus
TRL's RewardTrainer (sequence-classification head), on the same text-only Qwen2 backbone and pairs.

    python -m benchmarks.rm_trainer [--hidden 512] [--layers 8] [--steps 20] [--batch-size 8]

Each trainer runs in its own process (so each peak RSS is its own), twice, alternating; the table
gives the mean pairs/s and the larger peak. Both score chosen and rejected in one padded forward.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile

from benchmarks.common import report

WORDS = (
    "red blue green circle square triangle left right top bottom small large the a is on of and "
    "there answer shape colour image shows exactly one two three four"
).split()


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Synthetic text pairs of realistic-ish length (prompt ~24 words, answers ~12-40 words)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        {
            "prompt": [{"role": "user", "content": text(24)}],
            "chosen": text(rng.randint(12, 40)),
            "rejected": text(rng.randint(12, 40)),
        }
        for _ in range(n)
    ]


def build_backbone(path: str, hidden: int, layers: int) -> None:
    """A text-only Qwen2 of `hidden` x `layers` (random weights) with the tiny tokenizer, saved to `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from policies.tiny import build_tokenizer
    from rl.tasks.shapes import vocabulary_corpus

    tok = build_tokenizer(vocabulary_corpus())
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).float().save_pretrained(path)
    tok.save_pretrained(path)


def worker(which: str, path: str, steps: int, batch_size: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = pairs(steps * batch_size)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-5,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=steps,
        seed=0,
        dataloader_num_workers=0,
    )
    if which == "ours":
        from datasets import Dataset
        from transformers import TrainingArguments

        from reward.model import BaseRewardModel, HeadConfig
        from reward.train import BTTrainer, PairCollator

        model = BaseRewardModel.from_backbone(path, HeadConfig(), seed=0)
        trainer = BTTrainer(
            model=model,
            args=TrainingArguments(remove_unused_columns=False, label_names=[], **common),
            train_dataset=Dataset.from_list(rows),
            data_collator=PairCollator(tokenizer),
        )
    else:
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        data = Dataset.from_list(
            [
                {
                    "prompt": r["prompt"],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in rows
            ]
        )
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**common), train_dataset=data, processing_class=tokenizer
        )
    runtime = trainer.train().metrics["train_runtime"]
    return {
        "pairs_per_s": steps * batch_size / runtime,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # child process: one trainer, result as one JSON line
        print(json.dumps(worker(args.worker, args.path, args.steps, args.batch_size)))
        return

    path = tempfile.mkdtemp()
    build_backbone(path, args.hidden, args.layers)
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for _ in range(args.repeats):
        for which in runs:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.rm_trainer",
                    "--worker",
                    which,
                    "--path",
                    path,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for which, label in (("trl", "TRL RewardTrainer (linear head)"), ("ours", "BTTrainer (BaseReward, MLP head)")):
        rate = sum(r["pairs_per_s"] for r in runs[which]) / len(runs[which])
        rows.append({"trainer": label, "pairs_per_s": rate, "peak_rss_MB": max(r["peak_rss_MB"] for r in runs[which])})
    rows[1]["ratio_vs_trl"] = rows[1]["pairs_per_s"] / rows[0]["pairs_per_s"]
    rows[0]["ratio_vs_trl"] = 1.0
    report(
        "rm_trainer",
        rows,
        {
            "hidden": args.hidden,
            "layers": args.layers,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "targets": {"ratio_vs_trl": ">= 1.0"},
        },
    )


if __name__ == "__main__":
    main()

"""Reward-model loading: `BaseRewardModel.from_pretrained` of a mid-size checkpoint on the CPU, against
reading its safetensors files (the floor), and against the way it loaded before (the architecture
built with random weights from its config, then the saved state dict copied in).

    python -m benchmarks.rm_load [--hidden 1024] [--layers 16] [--repeats 3]

Each path is timed in a fresh process (no warm caches of this process help the next), interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import report

PATHS = ("read safetensors files", "BaseRewardModel.from_pretrained", "before: random init + load_state_dict")


def build(out: str, hidden: int, layers: int) -> int:
    """A BaseReward checkpoint on the tiny Qwen2.5-VL scaled to `hidden` x `layers`; returns its bytes."""
    from policies.loading import load_processor
    from reward.model import BaseRewardModel, HeadConfig
    from rl.tasks.models import make_tiny_policy

    text = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 11 // 4,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": 2,
    }
    policy = str(make_tiny_policy(Path(out) / "policy", text=text))
    model = BaseRewardModel.from_backbone(policy, HeadConfig(), seed=0)
    model.save_pretrained(Path(out) / "rm", load_processor(policy))
    return sum(p.numel() * p.element_size() for p in model.parameters())


def load_once(which: str, path: str) -> float:
    """Seconds for one load by `which` (run in its own process; imports are done before the clock)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    from reward.model import BaseRewardModel

    files = sorted(Path(path).glob("*.safetensors"))
    start = time.perf_counter()
    if which == PATHS[0]:  # every byte of the files, into memory
        for f in files:
            f.read_bytes()
    elif which == PATHS[1]:
        BaseRewardModel.from_pretrained(path)
    else:  # what from_pretrained did before: every weight initialised at random, then overwritten
        state = {k: v for f in files if f.name.startswith("model") for k, v in load_file(f).items()}
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        backbone.load_state_dict(state, strict=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(load_once(args.worker, args.path))
        return

    tmp = tempfile.mkdtemp()
    nbytes = build(tmp, args.hidden, args.layers)
    rm = str(Path(tmp) / "rm")
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    for _ in range(args.repeats):
        for which in PATHS:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.rm_load", "--worker", which, "--path", rm],
                capture_output=True,
                text=True,
                check=True,
            )
            times[which].append(float(out.stdout.strip().splitlines()[-1]))
    floor = statistics.median(times[PATHS[0]])
    rows = [
        {
            "path": p,
            "seconds": statistics.median(times[p]),
            "GB_per_s": nbytes / statistics.median(times[p]) / 1e9,
            "ratio_vs_file_read": statistics.median(times[p]) / floor,
        }
        for p in PATHS
    ]
    report(
        "rm_load",
        rows,
        {
            "checkpoint_bytes": nbytes,
            "hidden": args.hidden,
            "layers": args.layers,
            "repeats": args.repeats,
            "seconds_all": times,
            "targets": {"from_pretrained ratio_vs_file_read": "<= 3x"},
        },
    )


if __name__ == "__main__":
    main()

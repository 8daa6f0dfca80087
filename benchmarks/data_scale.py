"""Loading a large preference mixture: peak memory and time to the first batch.

    python -m benchmarks.data_scale [--rows 200000] [--sources 4]

Writes `--rows` text preference pairs split over `--sources` JSONL files on disk (half of them with
message-list responses, as Tulu / OLMo / UltraFeedback ship them), then, in a fresh process, loads
them as the reward-model recipe does (`load_preference_mixture`: every row read, mapped and checked,
streamed to a memory-mapped Arrow file, the sources mixed by weight) and reads the first batch of 8.
Reports the time to that batch, the rows per second, and the process's peak RSS next to the size of
the data on disk: a loader that held the sources in memory would need several times the data's size.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import report

WORDS = (
    "the of and to in is that for it as with was on be by this are or at from which an have not but has "
    "reward model image answer question color shape count position policy learner rollout scorer"
).split()


def write_sources(folder: Path, rows: int, sources: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    paths = []
    for s in range(sources):
        path = folder / f"source{s}.jsonl"
        with open(path, "w") as f:
            for _ in range(rows // sources):
                prompt, chosen, rejected = text(40), text(60), text(60)
                if s % 2:  # message lists: the assistant turn is the response, the rest the prompt
                    turn = {"role": "user", "content": prompt}
                    row = {
                        "chosen": [turn, {"role": "assistant", "content": chosen}],
                        "rejected": [turn, {"role": "assistant", "content": rejected}],
                    }
                else:
                    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths


def first_batch(paths: list[str]) -> dict:
    """Run in its own process: load the mixture, read the first batch; seconds and peak RSS."""
    from rl.config import PreferenceDataConfig, PreferenceSourceConfig
    from rl.data import load_preference_mixture

    start = time.perf_counter()
    cfg = PreferenceDataConfig(sources=[PreferenceSourceConfig(source=p, weight=1.0) for p in paths], eval_source=None)
    train, _ = load_preference_mixture(cfg)
    batch = train[:8]
    seconds = time.perf_counter() - start
    assert len(batch["chosen"]) == 8
    return {
        "rows": len(train),
        "seconds_to_first_batch": seconds,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(first_batch(args.worker)))
        return
    folder = Path(tempfile.mkdtemp())
    paths = write_sources(folder, args.rows, args.sources)
    on_disk = sum(p.stat().st_size for p in paths) / 2**20
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, rl.data; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_scale", "--worker", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    imports_mb = float(baseline.stdout.strip().splitlines()[-1])
    rows = [
        {
            "rows": result["rows"],
            "sources": args.sources,
            "data_on_disk_MB": on_disk,
            "seconds_to_first_batch": result["seconds_to_first_batch"],
            "rows_per_s": result["rows"] / result["seconds_to_first_batch"],
            "peak_rss_MB": result["peak_rss_MB"],
            "rss_of_the_imports_MB": imports_mb,
            "peak_rss_above_imports_MB": result["peak_rss_MB"] - imports_mb,
        }
    ]
    report("data_scale", rows, {"rows": args.rows, "sources": args.sources})


if __name__ == "__main__":
    main()

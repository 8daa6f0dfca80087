"""Peak memory (RSS of the whole process tree: driver, Ray's processes and its actors) of
`brl demo --quick` and of a short GRPO run on the tiny config, with and without Ray actors.

    python -m benchmarks.memory [--skip-demo]

Each job runs as a subprocess; its process tree's resident memory is sampled every 0.1 s. The peak
of the sum over processes counts shared pages once per process, so it is an upper bound.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import report

CONFIG = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"


def peak_rss(cmd: list[str], timeout_s: float = 900) -> dict:
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_tree = peak_driver = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass  # exited between listing and reading
            peak_tree = max(peak_tree, sum(rss))
            peak_driver = max(peak_driver, root.memory_info().rss)
        except psutil.Error:
            break
        if time.perf_counter() - start > timeout_s:
            proc.kill()
            raise TimeoutError(f"{cmd} ran past {timeout_s}s")
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd} failed:\n{err[-2000:]}")
    return {
        "peak_tree_MB": peak_tree / 2**20,
        "peak_driver_MB": peak_driver / 2**20,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-demo", action="store_true", help="only the GRPO runs (fast)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    cli = [sys.executable, "-m", "recipes.cli"]
    grpo = [*cli, "grpo", str(CONFIG), f"trainer.max_steps={args.steps}", "trainer.report_to=[]"]
    jobs = {
        f"brl grpo tiny_cpu_rule.yaml ({args.steps} steps, one process)": [*grpo, f"output_dir={tempfile.mkdtemp()}"],
        f"brl grpo tiny_cpu_rule.yaml ({args.steps} steps, Ray rollout + rule actors)": [
            *grpo,
            f"output_dir={tempfile.mkdtemp()}",
            "ray.enabled=true",
            "ray.num_cpus=2",
            "rollout.actors.num_cpus=1",
            "reward.actors.rule.num_actors=1",
        ],
    }
    if not args.skip_demo:
        jobs["brl demo --quick"] = [*cli, "demo", "--quick", "--out", tempfile.mkdtemp()]
    rows = [{"job": name, **peak_rss(cmd)} for name, cmd in jobs.items()]
    report("memory", rows, {"sampling_interval_s": 0.1})


if __name__ == "__main__":
    main()

"""The benchmark scripts run (with small sizes) and write their JSON: they cannot silently rot.
Their numbers are measured by running them for real (see README), never asserted here."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize(
    "module,args",
    [
        (
            "benchmarks.reward_cost",
            ["--prompts", "2", "--group", "4", "--batch-sizes", "4", "8", "--verdict-tokens", "4", "--repeats", "1"],
        ),
        # Every path in one run (one process, one Ray start): the vLLM actor's two as well where vLLM is installed
        # (then it takes the vLLM lane's lock: tests/vllm_lock.py).
        pytest.param(
            "benchmarks.weight_sync",
            ["--size", "tiny", "--actors", "1", "--repeats", "1", *(["--vllm"] if VLLM else [])],
            marks=[pytest.mark.vllm] if VLLM else [],
            id="weight_sync",
        ),
        ("benchmarks.pipeline_overhead", ["--steps", "2", "--sft-steps", "2", "--repeats", "1"]),
        ("benchmarks.step_breakdown", ["--steps", "3", "--sizes", "tiny"]),
        ("benchmarks.rollout_scaling", ["--actors", "1", "2", "--prompts", "4", "--tokens", "4"]),
        (
            "benchmarks.rm_trainer",
            ["--hidden", "128", "--layers", "2", "--steps", "2", "--batch-size", "2", "--repeats", "1"],
        ),
        ("benchmarks.memory", ["--skip-demo", "--steps", "1"]),
        ("benchmarks.rm_load", ["--hidden", "128", "--layers", "2", "--repeats", "1"]),
        ("benchmarks.data_scale", ["--rows", "2000", "--sources", "2"]),
        ("benchmarks.learner_workers", ["--steps", "2", "--strategies", "ddp", "--sft-steps", "2"]),
    ],
)
def test_benchmark_script_writes_json(module, args, tmp_path):
    env = {**os.environ, "BRL_BENCH_OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert data["rows"] and all(isinstance(v, (int, float, str)) for row in data["rows"] for v in row.values())
    assert "| " in proc.stdout  # the printed table
    if "--vllm" in args:
        assert {"vLLM actor: object store + reload_weights", "vLLM actor: weight transfer (gloo)"} <= {
            row["path"] for row in data["rows"]
        }

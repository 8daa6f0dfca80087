"""Shared helpers for the benchmark scripts: timing, JSON + table output, machine description, the
warmed-up tiny policy."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

# The tiny Qwen2.5-VL's language model, scaled (`text` of rl.tasks.models.make_tiny_policy; None: as built).
POLICY_SIZES: dict[str, dict[str, int] | None] = {
    "tiny": None,
    "mid": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
    },
}


def best_of(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeats` runs after `warmup` runs (noisy shared machines)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512 (rounding and speed differ between such machines)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name} ({'AVX-512' if 'avx512f' in info else 'no AVX-512'})"


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def report(name: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Write `$BRL_BENCH_OUT/<name>.json` (default benchmarks/results) and `<name>.md` (the same rows as a
    Markdown table, with the machine), and print the table."""
    out = Path(os.environ.get("BRL_BENCH_OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **extra, "rows": rows}, indent=2))
    keys = list(dict.fromkeys(k for row in rows for k in row))  # every column, in first-seen order
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [row.get(k, "-") for k in keys]
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    table = "\n".join(lines)
    host = machine()
    (out / f"{name}.md").write_text(f"# {name}\n\n{table}\n\nMachine: {json.dumps(host)}\n")
    print(f"\n{name} ({path})\n\n{table}")
    return path


def warm_policy(sft_steps: int) -> str:
    """The tiny policy after the tests' short SFT warm-up: it answers in the task's format, so the
    rule reward has variance and the reward curves mean something."""
    from recipes import sft
    from rl.config import SFTRecipeConfig, load_config
    from rl.tasks.models import make_tiny_policy

    base = str(make_tiny_policy(tempfile.mkdtemp()))
    cfg = load_config(
        SFTRecipeConfig,
        None,
        [
            f"output_dir={tempfile.mkdtemp()}",
            f"policy.path={base}",
            "data.train_size=512",
            f"trainer.max_steps={sft_steps}",
            "trainer.per_device_train_batch_size=32",
            "trainer.learning_rate=1e-3",
            "policy.freeze_vision=true",
            "trainer.report_to=[]",
        ],
    )
    return sft.main(cfg)["final_policy"]

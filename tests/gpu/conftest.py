"""The GPU lane (`pytest -m gpu tests/gpu`): random-weight models of the real shapes on one CUDA GPU.

Skipped where no CUDA device is visible. On the lent GPU machine: see ../shared/gpu/README.md (carry
`.device-carry`, then `source .device-carry/setup.sh && python3 -m pytest -m gpu tests/gpu -q -x`).
The models are the published Qwen2.5-VL-3B and -7B dimensions (policies/known_models.py) with random
weights and the offline tiny tokenizer (its token ids put into the config): memory and speed are the
real ones, answers are noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.tasks.models import make_real_shape_model

ROOT = Path(__file__).parent.parent.parent


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible (the GPU lane runs on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def policy_3b(tmp_path_factory) -> str:
    return str(make_real_shape_model("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path_factory.mktemp("qwen25vl3b")))


@pytest.fixture(scope="session")
def reward_7b(tmp_path_factory) -> str:
    return str(
        make_real_shape_model("Qwen/Qwen2.5-VL-7B-Instruct", tmp_path_factory.mktemp("basereward7b"), reward_model=True)
    )


@pytest.fixture()
def brl():
    """brl(*args): `brl ...` in a fresh process (the learner's process chooses its GPU before CUDA starts)."""

    def run(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        return subprocess.run(
            [sys.executable, "-m", "recipes.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run

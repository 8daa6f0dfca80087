"""On one CUDA GPU, with random-weight models of the real shapes: placement and mixed precision on
CUDA, the 7B reward model's load time, the hybrid pipeline sharing the GPU, and memory against the plan."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
CONFIGS = Path(__file__).parent.parent.parent / "recipes" / "configs"


def test_float32_master_weights_with_bf16_compute_move_every_weight_on_cuda(tmp_path, tiny_vl, share_updated):
    """The CPU test's check (tests/test_precision.py), on CUDA: bf16 autocast on the GPU."""
    assert share_updated(tmp_path, tiny_vl, "float32") >= 0.99


def test_the_7b_reward_model_loads_within_30_seconds(reward_7b):
    from reward.model import BaseRewardModel

    start = time.perf_counter()
    model = BaseRewardModel.from_pretrained(reward_7b, device="cuda")
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"BaseReward-7B shapes ({params / 1e9:.2f}B parameters): loaded onto the GPU in {seconds:.1f}s")
    assert abs(params - 7.76e9) < 0.01e9 and next(model.parameters()).is_cuda
    assert seconds < 30


class PeakMemory:
    """Device-wide memory in use (every process on the GPU), sampled every 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_the_hybrid_pipeline_shares_one_gpu_for_3_steps_within_the_plan(tmp_path, policy_3b, reward_7b, brl):
    """Learner (LoRA on the 3.75B policy), one rollout actor and the 7.76B reward-model actor on one GPU in
    fractions; 3 GRPO steps; the learner pinned to the GPU; peak memory of the GPU (all processes)
    within 15% of what `brl plan` estimates for it."""
    from lane_layouts import ONE_GPU_HYBRID_CONFIG, one_gpu_hybrid

    from pipeline.memory_plan import GiB, plan_for
    from recipes import grpo
    from rl.learner import grpo_args

    overrides = one_gpu_hybrid(tmp_path, policy_3b, reward_7b)
    config = ONE_GPU_HYBRID_CONFIG
    with PeakMemory() as memory:
        run = brl("grpo", config, *overrides)
    assert run.returncode == 0, run.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["learner_gpus"] == ["0"]
    cfg = grpo.load(config, overrides)
    (gpu,), _ = plan_for(
        cfg,
        grpo_args(str(tmp_path), 0, dict(cfg.trainer)),
        1,
        torch.cuda.get_device_properties(0).total_memory,
        text_tokens=32,
    )
    print(f"GPU peak {memory.peak / GiB:.1f} GiB; `brl plan` estimate {gpu.total / GiB:.1f} GiB")
    assert memory.peak <= 1.15 * gpu.total


def test_the_3b_policy_reaches_an_actor_on_the_learners_gpu_in_under_a_second(policy_3b, tmp_path):
    """Weight sync at hardware speed (issue #17): float32 masters of the 3.75B policy on the GPU, one
    transformers engine (bfloat16) on the same GPU; rollout.weight_sync: auto picks shared_memory (CUDA
    IPC): each sync is a cast into a staging bucket and a device-to-device copy."""
    import ray

    from pipeline.rollout_pool import RolloutPool, spawn_rollout_actors
    from pipeline.weight_sync import learner_location
    from pipeline.weight_sync.export import PolicyWeights
    from policies.hf_engine import HFEngine
    from policies.loading import load_policy
    from rl.config import ActorGroupConfig, RolloutConfig

    model = load_policy(policy_3b, "float32").cuda()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actors = spawn_rollout_actors(
            HFEngine,
            {"model": policy_3b, "dtype": "bfloat16"},
            ActorGroupConfig(num_actors=1, num_cpus=1, num_gpus=0.3),
        )
        pool = RolloutPool(actors, RolloutConfig(timeout_s=600), learner_location(["0"]))  # the learner: this process
        assert type(pool.sync).__name__ == "SharedMemorySync"
        weights = PolicyWeights(model, torch.bfloat16)
        pool.load_weights(weights, 1)
        times = []
        for version in range(2, 5):
            start = time.perf_counter()
            pool.load_weights(weights, version)
            times.append(time.perf_counter() - start)
        print(f"3.75B float32 -> bf16 actor on the same GPU: {sorted(times)[1]:.3f} s per sync (median of 3)")
        assert pool.versions() == [4] and sorted(times)[1] < 1.0
        name = "model.language_model.layers.0.mlp.down_proj.weight"
        theirs = ray.get(actors[0].weight.remote(name))
        assert torch.equal(theirs, model.state_dict()[name].bfloat16().cpu())
    finally:
        ray.shutdown()


def test_a_colocated_engine_trains_on_cuda_with_bf16_generation(tmp_path, tiny_vl, brl):
    run = brl(
        "grpo",
        str(CONFIGS / "tiny_cpu_rule.yaml"),
        f"output_dir={tmp_path}",
        f"policy.path={tiny_vl}",
        "ray.enabled=true",
        "ray.num_cpus=4",
        "rollout.colocate=true",
        "rollout.dtype=bfloat16",
        "policy.dtype=float32",
        "trainer.bf16=true",
        "trainer.max_steps=2",
        "trainer.report_to=[]",
    )
    assert run.returncode == 0, run.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["learner_gpus"] == ["0"]


_IPC_READER = """
import pickle, struct, sys, torch
mapped = {}
while header := sys.stdin.buffer.read(4):
    bucket = pickle.loads(sys.stdin.buffer.read(struct.unpack("<I", header)[0]))
    sums = {name: t.double().sum().item() for name, t in bucket.attach(mapped).items()}
    torch.cuda.synchronize()
    print(repr((sums, len(mapped))), flush=True)
"""


def test_cuda_ipc_storages_are_opened_once_and_read_fresh_every_sync():
    """Finding 9 on CUDA (its CPU twin: tests/test_weight_sync.py, same lines but opening a storage):
    a reader process opens each of the learner's CUDA storages once, and every later sync reads that
    sync's values through the same mapping, the staging buffer (bfloat16 casts) included."""
    import ast
    import math
    import pickle
    import struct
    import subprocess
    import sys

    from pipeline.weight_sync.export import PolicyWeights
    from pipeline.weight_sync.shared_memory import SharedMemorySync

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).cuda()
    sync = SharedMemorySync(calls=None, bucket_bytes=4096)
    reader = subprocess.Popen([sys.executable, "-c", _IPC_READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    opened = []
    try:
        for _ in range(3):
            with torch.no_grad():
                model[0].weight.add_(1.0)
            for weights in (PolicyWeights(model), PolicyWeights(model, torch.bfloat16)):
                for bucket in sync.buckets(weights):
                    blob = pickle.dumps(bucket)
                    reader.stdin.write(struct.pack("<I", len(blob)) + blob)
                    reader.stdin.flush()
                    sums, mapped = ast.literal_eval(reader.stdout.readline().decode())
                    assert all(math.isclose(sums[k], weights[k].double().sum().item(), rel_tol=1e-9) for k in sums)
                    opened.append(mapped)
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)
    assert opened[-1] == len(sync._shared) == len(list(model.parameters())) + 1  # parameters and the staging buffer

"""Placement on a GPU node, checked on CPU with Ray's logical GPUs: the learner's process is pinned to
the GPU(s) it trains on, Ray hands the others (or what is left of a shared one) to the actors, and a
config that asks for more than there is fails before anything starts."""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from recipes import grpo
from rl.config import ConfigError
from rl.placement import GPURequest, gpu_requests, pack, placed

pytestmark = pytest.mark.ray


def _cfg(*overrides: str):
    return grpo.load(None, ["ray.enabled=true", "ray.num_cpus=8", "reward.scheme=hybrid", *overrides])


def test_pack_gives_whole_gpus_to_whole_requests_and_shares_fractions():
    placed_ = pack([GPURequest("learner", 1), GPURequest("rollout actor 0", 0.5), GPURequest("rollout actor 1", 0.5),
                    GPURequest("scorer actor 0", 2)], 4)
    assert [[r.who for r in gpu] for gpu in placed_] == [["scorer actor 0"], ["scorer actor 0"], ["learner"],
                                                         ["rollout actor 0", "rollout actor 1"]]
    with pytest.raises(ConfigError, match=r"asks for 1\.8 GPUs \(rollout actor: 1\.8\) and they do not fit on "
                                          r"the 2 GPU\(s\)"):
        pack([GPURequest(f"rollout actor {i}", 0.6) for i in range(3)], 2)  # 0.6 + 0.6 > 1: three GPUs
    with pytest.raises(ConfigError, match="must be a whole number"):
        pack([GPURequest("learner", 1.5)], 2)


def test_the_learner_takes_a_gpu_only_where_there_are_gpus():
    cfg = _cfg("rollout.actors.num_gpus=1", "reward.model.actors.num_gpus=0.5")
    assert [(r.who, r.gpus) for r in gpu_requests(cfg, 8)] == [("learner", 1.0), ("rollout actor 0", 1.0),
                                                               ("scorer actor 0", 0.5)]
    assert [r.who for r in gpu_requests(cfg, 0)] == ["rollout actor 0", "scorer actor 0"]  # a CPU learner


def test_learner_workers_are_placed_with_the_actors_from_one_config_and_checked_up_front():
    cfg = grpo.load(str(Path(__file__).parent.parent / "recipes" / "configs" / "gpu_grpo_qwen25vl3b_8gpu_fsdp.yaml"))
    requests = gpu_requests(cfg, 8)
    assert [r.who for r in requests][:4] == [f"learner worker {i}" for i in range(4)] and len(requests) == 8
    assert [len(gpu) for gpu in pack(requests, 8)] == [1] * 8
    with pytest.raises(ConfigError, match=r"asks for 9 GPUs \(learner worker: 5, rollout actor: 3, scorer actor: 1\)"):
        pack(gpu_requests(grpo.load(None, ["ray.enabled=true", "learner.num_workers=5", "learner.gpus_per_worker=1",
                                           "rollout.actors.num_actors=3", "rollout.actors.num_gpus=1",
                                           "reward.scheme=hybrid", "reward.model.actors.num_gpus=1"]), 8), 8)


class VisibleDevices:
    def cuda_visible_devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")


def _placed_devices(cfg) -> tuple[str, list[str], list[str]]:
    """CUDA_VISIBLE_DEVICES of this process (the learner) and of each rollout / scorer actor."""
    import ray
    from ray import cloudpickle

    from rl.actors import spawn_group

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module
    with placed(cfg):
        learner = os.environ.get("CUDA_VISIBLE_DEVICES")
        rollout = spawn_group("rollout", VisibleDevices, {}, cfg.rollout.actors)
        scorer = spawn_group("scorer", VisibleDevices, {}, cfg.reward.model.actors)
        return (learner, ray.get([a.cuda_visible_devices.remote() for a in rollout]),
                ray.get([a.cuda_visible_devices.remote() for a in scorer]))


@pytest.fixture()
def no_cluster():
    """These tests start their own local cluster (with logical GPUs); the shared one is stopped first."""
    import ray

    ray.shutdown()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == saved, "placement must give this process its devices back"
    assert not ray.is_initialized(), "a cluster placement started must be shut down with it"


def test_an_8_gpu_node_pins_the_learner_and_gives_every_actor_its_own_gpu(no_cluster):
    learner, rollout, scorer = _placed_devices(_cfg(
        "ray.num_gpus=8", "rollout.actors.num_actors=6", "rollout.actors.num_gpus=1", "rollout.actors.num_cpus=0.5",
        "reward.model.actors.num_gpus=1", "reward.model.actors.num_cpus=0.5"))
    assert learner is not None and len(learner.split(",")) == 1  # exactly one GPU: TRL sees n_gpu = 1
    assert sorted([learner, *rollout, *scorer]) == [str(i) for i in range(8)]  # nobody shares, nobody left out


def test_a_single_gpu_is_shared_by_learner_rollout_actor_and_scorer_in_fractions(no_cluster):
    learner, rollout, scorer = _placed_devices(_cfg(
        "ray.num_gpus=1", "learner.gpus_per_worker=0.4", "rollout.actors.num_gpus=0.3",
        "rollout.actors.num_cpus=0.5", "reward.model.actors.num_gpus=0.3", "reward.model.actors.num_cpus=0.5"))
    assert (learner, rollout, scorer) == ("0", ["0"], ["0"])


def test_a_config_that_asks_for_more_gpus_than_the_node_has_fails_before_ray_starts(no_cluster):
    import ray

    cfg = _cfg("ray.num_gpus=8", "rollout.actors.num_actors=7", "rollout.actors.num_gpus=1",
               "reward.model.actors.num_gpus=1")
    with pytest.raises(ConfigError, match=r"asks for 9 GPUs \(learner: 1, rollout actor: 7, scorer actor: 1\) and "
                                          r"they do not fit on the 8 GPU"):
        with placed(cfg):
            pass
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_new_local_cluster_starts_even_when_another_runs_on_the_machine(no_cluster):
    """`ray start --head` elsewhere on the machine: with ray.address unset the recipe starts a cluster of
    its own (with the CPUs and GPUs it asks for) instead of failing to join that one."""
    import ray

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    subprocess.run([ray_cli, "start", "--head", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=120)
    try:
        with pytest.raises(ValueError, match="When connecting to an existing cluster"):  # what plain ray.init does
            ray.init(num_cpus=8)
        with placed(_cfg("ray.num_gpus=2", "rollout.actors.num_gpus=1", "reward.model.actors.num_gpus=0")):
            assert ray.cluster_resources()["CPU"] == 8 and ray.cluster_resources()["GPU"] == 2
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_the_gpu_lanes_one_gpu_hybrid_run_trains_here_on_a_logical_gpu(tmp_path, tiny_vl, untrained_rm, no_cluster):
    """The CPU twin of the GPU lane's pipeline test: the same config and overrides (lane_layouts), the tiny
    models for the real shapes and one logical GPU for the real one. The learner (LoRA on a bf16 base),
    the rollout actor and the scorer share it in fractions and train 3 steps; what the lane adds on the
    GPU is CUDA itself and the memory check. (This twin found two errors the lane would have stopped on
    before it ever ran: `save_strategy=no` read as False, and a memory check asking CUDA about a logical GPU.)"""
    from lane_layouts import ONE_GPU_HYBRID_CONFIG, one_gpu_hybrid

    summary = grpo.main(grpo.load(ONE_GPU_HYBRID_CONFIG,
                                  [*one_gpu_hybrid(tmp_path, tiny_vl, untrained_rm), "ray.num_gpus=1"]))
    assert summary["global_step"] == 3 and summary["learner_gpus"] == ["0"] and summary["rollout_version"] == 2
    assert summary["reward_samples"]["hybrid"] > 0 and summary["reward_failures"]["hybrid"] == 0

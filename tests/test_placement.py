"""Placement on a GPU node, checked on CPU with Ray's logical GPUs: the learner's process is pinned to
the GPU(s) it trains on, Ray hands the others (or what is left of a shared one) to the actors, and a
config that asks for more than there is fails before anything starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.placement import Request, gpu_requests, pack, placed
from recipes import grpo
from rl.config import ConfigError

pytestmark = pytest.mark.ray


def _cfg(*overrides: str):
    return grpo.load(None, ["ray.enabled=true", "ray.num_cpus=8", "reward.scheme=hybrid", *overrides])


def test_pack_gives_whole_gpus_to_whole_requests_and_shares_fractions():
    placed_ = pack(
        [
            Request("learner", 1),
            Request("rollout actor 0", 0.5),
            Request("rollout actor 1", 0.5),
            Request("scorer actor 0", 2),
        ],
        4,
    )
    assert [[r.who for r in gpu] for gpu in placed_] == [
        ["scorer actor 0"],
        ["scorer actor 0"],
        ["learner"],
        ["rollout actor 0", "rollout actor 1"],
    ]
    with pytest.raises(
        ConfigError,
        match=r"asks for 1\.8 GPUs \(rollout actor: 1\.8\) and they do not fit on "
        r"the 2 GPU\(s\)",
    ):
        pack([Request(f"rollout actor {i}", 0.6) for i in range(3)], 2)  # 0.6 + 0.6 > 1: three GPUs
    with pytest.raises(ConfigError, match="must be a whole number"):
        pack([Request("learner", 1.5)], 2)


def test_the_learner_takes_a_gpu_only_where_there_are_gpus():
    cfg = _cfg("rollout.actors.num_gpus=1", "reward.actors.model.num_gpus=0.5")
    assert [(r.who, r.gpus) for r in gpu_requests(cfg, 8)] == [
        ("learner", 1.0),
        ("rollout actor 0", 1.0),
        ("reward model actor 0", 0.5),
    ]
    assert [r.who for r in gpu_requests(cfg, 0)] == ["rollout actor 0", "reward model actor 0"]  # a CPU learner


def test_learner_workers_are_placed_with_the_actors_from_one_config_and_checked_up_front():
    cfg = grpo.load(str(Path(__file__).parent.parent / "recipes" / "configs" / "gpu_grpo_qwen25vl3b_8gpu_fsdp.yaml"))
    requests = gpu_requests(cfg, 8)
    assert [r.who for r in requests][:4] == [f"learner worker {i}" for i in range(4)] and len(requests) == 8
    assert [len(gpu) for gpu in pack(requests, 8)] == [1] * 8
    with pytest.raises(
        ConfigError, match=r"asks for 9 GPUs \(learner worker: 5, rollout actor: 3, reward model actor: 1\)"
    ):
        pack(
            gpu_requests(
                grpo.load(
                    None,
                    [
                        "ray.enabled=true",
                        "learner.num_workers=5",
                        "learner.gpus_per_worker=1",
                        "rollout.actors.num_actors=3",
                        "rollout.actors.num_gpus=1",
                        "reward.scheme=hybrid",
                        "reward.actors.model.num_gpus=1",
                    ],
                ),
                8,
            ),
            8,
        )


class VisibleDevices:
    def cuda_visible_devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")


def _placed_devices(cfg) -> tuple[str, list[str], list[str]]:
    """CUDA_VISIBLE_DEVICES of this process (the learner) and of each rollout / scorer actor."""
    import ray
    from ray import cloudpickle

    from pipeline.actors import start_group

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module
    with placed(cfg):
        learner = os.environ.get("CUDA_VISIBLE_DEVICES")
        rollout = start_group("rollout", VisibleDevices, {}, cfg.rollout.actors).ready()
        scorer = start_group("scorer", VisibleDevices, {}, cfg.reward.actors.model).ready()
        return (
            learner,
            ray.get([a.cuda_visible_devices.remote() for a in rollout]),
            ray.get([a.cuda_visible_devices.remote() for a in scorer]),
        )


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
    learner, rollout, scorer = _placed_devices(
        _cfg(
            "ray.num_gpus=8",
            "rollout.actors.num_actors=6",
            "rollout.actors.num_gpus=1",
            "rollout.actors.num_cpus=0.5",
            "reward.actors.model.num_gpus=1",
            "reward.actors.model.num_cpus=0.5",
        )
    )
    assert learner is not None and len(learner.split(",")) == 1  # exactly one GPU: TRL sees n_gpu = 1
    assert sorted([learner, *rollout, *scorer]) == [str(i) for i in range(8)]  # nobody shares, nobody left out


def test_a_single_gpu_is_shared_by_learner_rollout_actor_and_scorer_in_fractions(no_cluster):
    learner, rollout, scorer = _placed_devices(
        _cfg(
            "ray.num_gpus=1",
            "learner.gpus_per_worker=0.4",
            "rollout.actors.num_gpus=0.3",
            "rollout.actors.num_cpus=0.5",
            "reward.actors.model.num_gpus=0.3",
            "reward.actors.model.num_cpus=0.5",
        )
    )
    assert (learner, rollout, scorer) == ("0", ["0"], ["0"])


def test_a_config_that_asks_for_more_gpus_than_the_node_has_fails_before_ray_starts(no_cluster):
    import ray

    cfg = _cfg(
        "ray.num_gpus=8", "rollout.actors.num_actors=7", "rollout.actors.num_gpus=1", "reward.actors.model.num_gpus=1"
    )
    with pytest.raises(
        ConfigError,
        match=r"asks for 9 GPUs \(learner: 1, rollout actor: 7, reward model actor: 1\) "
        r"and they do not fit on the 8 GPU",
    ):
        with placed(cfg):
            pass
    assert not ray.is_initialized()


def test_cpus_and_labels_the_cluster_lacks_are_refused_at_once_with_the_numbers(no_cluster, capsys):
    """The run the issue saw sit for ten minutes (two learner workers and a rollout actor asking for 3 CPUs
    of a 2-core machine's local cluster; Ray Train waited for a worker that could never be scheduled): now
    refused before Ray starts, naming what was asked and what there is. A custom label no node has (a local
    cluster has none) likewise."""
    import ray

    from recipes.cli import main as cli

    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"
    code = cli(
        ["grpo", str(config), "ray.enabled=true", "ray.num_cpus=2", "learner.num_workers=2", "trainer.max_steps=2"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "asks for 3 CPU (learner worker: 2, rollout actor: 1) but the local Ray cluster "
        "(ray.num_cpus=2, 0 GPUs) has 2"
        in err
    ), err
    assert "learner.num_cpus_per_worker" in err and not ray.is_initialized()
    with pytest.raises(
        ConfigError,
        match=r"asks for 2 rollout_node \(rollout actor: 2\) but the local Ray cluster "
        r".* has 0: start nodes with that label",
    ):
        with placed(_cfg("rollout.actors.num_actors=2", "rollout.actors.resources={rollout_node: 1}")):
            pass


class GPUEngine:
    """Stands in for a vLLM engine on a GPU: it reports its weights' device through the engine protocol
    (a real VLLMEngine reports vLLM's platform) and loads what it is sent."""

    def __init__(self):
        self.version = 0

    def weights_device(self):
        return "cuda"

    def load_weights(self, named_tensors, version):
        self.received = {k: v.clone() for k, v in named_tensors.items()}
        self.version = version

    def loaded_version(self):
        return self.version


def test_auto_weight_sync_asks_the_engines_where_they_run_and_takes_the_gpu_path(no_cluster):
    """A learner on one logical GPU and engines that report "cuda" on others: `auto` picks the broadcast
    (NCCL on GPUs; here, without CUDA, its gloo twin), not the object store; an engine on the learner's own
    GPU gets shared memory (CUDA IPC). (The old rule read an engine's `.device` attribute, which vLLM
    engines lack, so GPU learners always fell back to the object store.)"""
    import ray
    import torch
    from ray import cloudpickle

    from pipeline.rollout_pool import RolloutPool, spawn_rollout_actors
    from pipeline.weight_sync import learner_location
    from rl.config import ActorGroupConfig, RolloutConfig

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        here = learner_location(["0"])
        assert here.gpu is None  # without CUDA, a learner on a logical GPU keeps its weights on the CPU ...
        same = spawn_rollout_actors(GPUEngine, {}, ActorGroupConfig(num_actors=1, num_cpus=0.5, num_gpus=0.5))
        learner = ray.get(same[0].weights_location.remote())  # ... so say a CUDA learner shares this one's GPU
        assert learner.node == here.node and learner.gpu is not None
        assert type(RolloutPool(same, RolloutConfig(timeout_s=60), learner).sync).__name__ == "SharedMemorySync"
        other = spawn_rollout_actors(GPUEngine, {}, ActorGroupConfig(num_actors=1, num_cpus=0.5, num_gpus=1))
        assert ray.get(other[0].weights_location.remote()).gpu not in (None, learner.gpu)  # the other GPU
        pool = RolloutPool(other, RolloutConfig(timeout_s=60), learner)
        assert type(pool.sync).__name__ == "BroadcastSync" and pool.sync.backend == "gloo"
        pool.load_weights({"w": torch.arange(4.0)}, version=2)  # and it delivers
        assert pool.versions() == [2]
        pool.close()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_new_local_cluster_starts_even_when_another_runs_on_the_machine(no_cluster):
    """`ray start --head` elsewhere on the machine: with ray.address unset the recipe starts a cluster of
    its own (with the CPUs and GPUs it asks for) instead of failing to join that one."""
    import ray

    with ray_start_head() as address:
        assert ray._private.utils.read_ray_address() == address  # what a plain ray.init finds
        with pytest.raises(ValueError, match="When connecting to an existing cluster"):  # what plain ray.init does
            ray.init(num_cpus=8)
        with placed(_cfg("ray.num_gpus=2", "rollout.actors.num_gpus=1", "reward.actors.model.num_gpus=0")):
            assert ray.cluster_resources()["CPU"] == 8 and ray.cluster_resources()["GPU"] == 2


@contextlib.contextmanager
def ray_start_head() -> Iterator[str]:
    """`ray start --head` as a user runs it, stopped afterwards without `ray stop`: `ray stop --force` kills
    every Ray process on the machine, the clusters of tests running beside this one included. `ray start`
    runs in a session of its own, so its cluster's processes are one process group, killed as one."""
    import ray

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    start = subprocess.Popen(
        [ray_cli, "start", "--head", "--port=0", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ours = None
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        ours = ray._private.utils.read_ray_address()
        yield ours
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(start.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(start.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        if ours and ray._private.utils.read_ray_address() == ours:
            # As `ray stop` does: a plain ray.init must not look for the dead cluster (only if the file
            # still names ours, not a cluster started since).
            os.remove(ray._private.utils.get_ray_address_file(None))


@pytest.mark.slow
def test_the_gpu_lanes_one_gpu_hybrid_run_trains_here_on_a_logical_gpu(tmp_path, tiny_vl, untrained_rm, no_cluster):
    """The CPU twin of the GPU lane's pipeline test: the same config and overrides (lane_layouts), the tiny
    models for the real shapes and one logical GPU for the real one. The learner (LoRA on a bf16 base),
    the rollout actor and the scorer share it in fractions and train 3 steps; what the lane adds on the
    GPU is CUDA itself and the memory check. (This twin found two errors the lane would have stopped on
    before it ever ran: `save_strategy=no` read as False, and a memory check asking CUDA about a logical GPU.)"""
    from lane_layouts import ONE_GPU_HYBRID_CONFIG, one_gpu_hybrid

    summary = grpo.main(
        grpo.load(ONE_GPU_HYBRID_CONFIG, [*one_gpu_hybrid(tmp_path, tiny_vl, untrained_rm), "ray.num_gpus=1"])
    )
    assert summary["global_step"] == 3 and summary["learner_gpus"] == ["0"] and summary["rollout_version"] == 2
    assert summary["reward_samples"]["hybrid"] > 0 and summary["reward_failures"]["hybrid"] == 0


def test_a_connected_cluster_waits_for_what_stopped_actors_still_hold_and_refuses_what_it_lacks(ray_local, monkeypatch):
    """`brl compare` runs one GRPO run after another in one cluster, and Ray gives a stopped run's CPUs back
    a moment after ray.kill: the next run waits for them (here: CPUs a placement group holds until it is
    removed 1.5 s later). A run that could never fit the cluster is refused at once; one whose resources
    stay taken, after pipeline.placement.RELEASE_WAIT_S."""
    import threading

    from ray.util.placement_group import placement_group, remove_placement_group

    from pipeline import placement

    def hold_all_but_one_cpu():
        group = placement_group([{"CPU": ray_local.available_resources()["CPU"] - 1}])
        ray_local.get(group.ready(), timeout=30)
        return group

    fits = _cfg()  # a rollout actor and a scorer actor: 2 CPUs
    held = hold_all_but_one_cpu()
    threading.Timer(1.5, remove_placement_group, args=(held,)).start()
    start = time.monotonic()
    with placement.ray_cluster(fits):
        assert time.monotonic() - start >= 1.4

    too_big = _cfg(f"rollout.actors.num_cpus={ray_local.cluster_resources()['CPU']:g}")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"the Ray cluster this process is connected to has"):
        with placement.ray_cluster(too_big):
            pass
    assert time.monotonic() - start < 1

    monkeypatch.setattr(placement, "RELEASE_WAIT_S", 1.0)
    held = hold_all_but_one_cpu()
    try:
        with pytest.raises(ConfigError, match=r"connected to \(free\) has 1"):
            with placement.ray_cluster(fits):
                pass
    finally:
        remove_placement_group(held)


def test_an_actor_given_no_gpu_sees_none_even_where_ray_leaves_the_nodes_mask(no_cluster, monkeypatch):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for 0-GPU actors (ray#54868): a scorer on the CPU would see
    every GPU of the node and pick `cuda`. Every pipeline actor hides them unless Ray gave it some."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the node's mask, which Ray's workers inherit
    learner, rollout, scorer = _placed_devices(
        _cfg("ray.num_gpus=2", "rollout.actors.num_gpus=1", "reward.actors.model.num_gpus=0")
    )
    assert rollout != [""] and rollout != ["0,1"] and len(rollout[0].split(",")) == 1  # Ray's own choice
    assert scorer == [""]


def test_compare_places_its_second_run_after_the_first_on_a_gpu_node(no_cluster, monkeypatch):
    """`brl compare` runs one after the other in one cluster and one process. The first run's PACK placement
    group must go with its actors (else the second waits for a GPU that never frees and is refused), and
    once CUDA is initialised the learner's mask stays (else the second run's pin refuses)."""
    import ray
    import torch
    from ray import cloudpickle

    from pipeline.actors import start_group, stopped_on_exit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module

    # Recorded by monkeypatch, which gives this process its mask back at teardown (CUDA would keep the pin).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the node's mask: the learner is pinned to one of them
    cfg = _cfg(
        "reward.scheme=rule",
        "ray.num_gpus=1",
        "learner.gpus_per_worker=0.5",
        "rollout.actors.num_gpus=0.5",
        "rollout.actors.num_cpus=0.5",
        "rollout.actors.placement=PACK",
        "rollout.actors.ready_timeout_s=10",
    )
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for run in range(2):
            started = time.monotonic()
            with placed(cfg) as placement, contextlib.ExitStack() as stack:
                assert placement.learner_gpu_ids == ["0"], run
                monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # the run's first step did
                group = stopped_on_exit(stack, start_group("rollout", VisibleDevices, {}, cfg.rollout.actors))
                assert ray.get([a.cuda_visible_devices.remote() for a in group.ready()]) == ["0"]
            assert time.monotonic() - started < 10, f"run {run} waited for what the run before still held"
            assert ray.util.placement_group_table() and all(
                pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values()
            ), run
    finally:
        ray.shutdown()

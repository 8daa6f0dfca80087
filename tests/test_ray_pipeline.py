"""The Ray lane: real actors on a local cluster, the real TRL learner."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.torch import share_cpu_storage
from pipeline.actor_calls import shard
from pipeline.actors import start_group, stop_actors
from pipeline.remote_reward import RemoteReward
from pipeline.rollout_pool import RolloutPool, spawn_rollout_actors
from pipeline.weight_sync.export import PolicyWeights
from policies.hf_engine import HFEngine
from policies.rollout_engine import RolloutRequest, SamplingParams
from recipes import grpo
from rl.config import ActorGroupConfig, RolloutConfig
from rl.tasks.shapes import make_shapes_dataset

pytestmark = pytest.mark.ray
CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def test_shard_keeps_order_and_covers_everything():
    items = list(range(10))
    parts = shard(items, 3)
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shard([1], 3) == [[1], [], []]
    assert [x for p in shard(items, 4) for x in p] == items


def _requests(n, seed=0):
    ds = make_shapes_dataset(n, seed=seed)
    return [RolloutRequest(p, imgs) for p, imgs in zip(ds["prompt"], ds["images"])]


def test_pool_gathers_in_order_across_actors(ray_local, warm_policy):
    group = ActorGroupConfig(num_actors=2, num_cpus=1)
    pool = RolloutPool(spawn_rollout_actors(HFEngine, {"model": warm_policy}, group), RolloutConfig(timeout_s=120))
    requests = _requests(5)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6)
    got = pool.generate(requests, greedy)
    local = HFEngine(warm_policy).generate(requests, greedy)
    assert [g[0].completion_ids for g in got] == [g[0].completion_ids for g in local]
    sampled = pool.generate(requests, SamplingParams(n=3, temperature=1.0, max_tokens=4))
    assert [len(g) for g in sampled] == [3] * 5
    assert all(len(r.logprobs) == len(r.completion_ids) for g in sampled for r in g)


def _perturbed_learner(policy, dtype="float32"):
    learner = HFEngine(policy, dtype=dtype)
    torch.manual_seed(1)
    with torch.no_grad():  # perturb: the synced weights must differ from what the actors loaded
        for name, p in learner.model.named_parameters():
            if "visual" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return learner


# Every transport that reaches HF engines, with buckets small enough that a sync takes many (64 KiB).
SYNC_PATHS = ["object_store", "shared_memory", "broadcast"]
TRANSPORTS = {"object_store": "ObjectStoreSync", "shared_memory": "SharedMemorySync", "broadcast": "BroadcastSync"}


@pytest.mark.parametrize("weight_sync", SYNC_PATHS)
def test_weight_sync_makes_actor_greedy_output_equal_the_learners(ray_local, warm_policy, weight_sync):
    learner = _perturbed_learner(warm_policy)
    group = ActorGroupConfig(num_actors=2, num_cpus=1)
    pool = RolloutPool(
        spawn_rollout_actors(HFEngine, {"model": warm_policy}, group),
        RolloutConfig(timeout_s=120, weight_sync=weight_sync, bucket_mb=1 / 16),
    )
    assert type(pool.sync).__name__ == TRANSPORTS[weight_sync]
    try:
        requests = _requests(4, seed=3)
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=10)
        before = [g[0].completion_ids for g in pool.generate(requests, greedy)]
        mine = [g[0].completion_ids for g in learner.generate(requests, greedy)]
        assert before != mine, "perturbation too small to test anything"
        pool.load_weights(PolicyWeights(learner.model), version=7)
        after = pool.generate(requests, greedy)
        assert [g[0].completion_ids for g in after] == mine
        assert {r.version for g in after for r in g} == {7} and pool.versions() == [7, 7]
        # A second sync (the path's steady state: mapped files, a formed group) after another change.
        with torch.no_grad():
            learner.model.get_output_embeddings().weight.mul_(1.5)
        pool.load_weights(PolicyWeights(learner.model), version=8)
        assert [g[0].completion_ids for g in pool.generate(requests, greedy)] == [
            g[0].completion_ids for g in learner.generate(requests, greedy)
        ]
        actor_state = ray_local.get(pool.actors[1].state_dict.remote())
        assert all(torch.equal(actor_state[k], v) for k, v in learner.model.state_dict().items())
    finally:
        pool.close()


@pytest.mark.parametrize("weight_sync", SYNC_PATHS)
def test_float32_learner_weights_reach_bfloat16_engines_cast(ray_local, warm_policy, weight_sync):
    """The GPU layout's dtypes (float32 masters, bfloat16 engines): each path casts on the way (in its
    staging buckets), and the engines decode as a bfloat16 engine given the same weights does."""
    learner = _perturbed_learner(warm_policy)
    pool = RolloutPool(
        spawn_rollout_actors(
            HFEngine, {"model": warm_policy, "dtype": "bfloat16"}, ActorGroupConfig(num_actors=1, num_cpus=1)
        ),
        RolloutConfig(timeout_s=120, weight_sync=weight_sync, bucket_mb=1 / 16),
    )
    staged: list[str] = []
    try:
        pool.load_weights(PolicyWeights(learner.model, torch.bfloat16), version=1)
        local = HFEngine(warm_policy, dtype="bfloat16")
        local.load_weights(PolicyWeights(learner.model, torch.bfloat16), version=1)
        requests, greedy = _requests(4, seed=3), SamplingParams(n=1, temperature=0.0, max_tokens=10)
        assert [g[0].completion_ids for g in pool.generate(requests, greedy)] == [
            g[0].completion_ids for g in local.generate(requests, greedy)
        ]
        actor_state = ray_local.get(pool.actors[0].state_dict.remote())
        assert all(
            v.dtype == torch.bfloat16 and torch.equal(v, local.state_dict()[k])
            for k, v in actor_state.items()
            if v.is_floating_point()
        )
        if weight_sync == "shared_memory":  # the cast weights went through a staging file
            staged = [share_cpu_storage(s.buffer)[1].decode() for s in pool.sync._staging.values()]
            assert staged
    finally:
        pool.close()
    # Closed, the transport leaves nothing in /dev/shm (RAM): the actor let go of the staging file it
    # mapped, so freeing the buffer unlinked it (an actor killed still holding it would leak it).
    assert not [name for name in staged if os.path.exists("/dev/shm" + name)]


@pytest.mark.parametrize("weight_sync", ["shared_memory", "broadcast"])
def test_an_actor_restarted_between_syncs_gets_the_last_weights_again(ray_local, warm_policy, weight_sync):
    """Killed after a sync, an actor comes back with the checkpoint's weights: the pool restores the
    version it held (the broadcast re-forms its group) before re-issuing its share."""
    learner = _perturbed_learner(warm_policy)
    pool = RolloutPool(
        spawn_rollout_actors(
            HFEngine, {"model": warm_policy}, ActorGroupConfig(num_actors=2, num_cpus=1, max_restarts=1)
        ),
        RolloutConfig(timeout_s=120, weight_sync=weight_sync, bucket_mb=1 / 16),
    )
    try:
        pool.load_weights(PolicyWeights(learner.model), version=3)
        old_pid = ray_local.get(pool.actors[1].pid.remote())
        ray_local.kill(pool.actors[1], no_restart=False)
        requests, greedy = _requests(4, seed=3), SamplingParams(n=1, temperature=0.0, max_tokens=10)
        got = pool.generate(requests, greedy)
        assert ray_local.get(pool.actors[1].pid.remote()) != old_pid and pool.restarts == 1
        assert [g[0].completion_ids for g in got] == [g[0].completion_ids for g in learner.generate(requests, greedy)]
        assert pool.versions() == [3, 3]
        pool.load_weights(PolicyWeights(learner.model), version=4)  # the group (if any) works after the restart
        assert pool.versions() == [4, 4]
    finally:
        pool.close()


class BrokenReceiver:
    """An engine whose process dies (or hangs) while it loads a broadcast bucket."""

    def weights_device(self):
        return "cpu"

    def __init__(self, hang: bool):
        self.hang = hang

    def load_weights(self, state, version):
        import os
        import time

        if self.hang:
            time.sleep(3600)
        os._exit(1)


@pytest.mark.parametrize("hang", [False, True])
def test_a_broadcast_whose_receiver_dies_or_hangs_ends_in_actor_failure_not_a_hang(ray_local, hang):
    import sys
    import time

    from ray import cloudpickle

    from rl.errors import ActorFailureError

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    group = ActorGroupConfig(num_actors=1, num_cpus=0.5, max_restarts=0, max_retries=0)
    actors = spawn_rollout_actors(BrokenReceiver, {"hang": hang}, group)
    pool = RolloutPool(actors, RolloutConfig(timeout_s=8, actors=group, weight_sync="broadcast"))
    start = time.monotonic()
    with pytest.raises(ActorFailureError, match="failed mid-round"):
        pool.load_weights({"w": torch.ones(1000)}, version=1)
    assert time.monotonic() - start < (6 if not hang else 14)  # a death is seen at once, a hang at the timeout
    # A hung receiver stays blocked in the broken round (its stop() would queue behind it): closing kills it.
    assert pool.sync.stuck == ([0] if hang else [])
    pool.close()
    assert _dies_within(ray_local, actors[0], seconds=30)


def test_remote_reward_matches_local(ray_local, untrained_rm):
    from reward.scorer import RewardModelOptions, RewardModelScorer

    actors = start_group(
        "reward model",
        RewardModelScorer,
        {"options": RewardModelOptions(paths=[untrained_rm])},
        ActorGroupConfig(num_actors=2, num_cpus=1),
    ).ready()
    remote = RemoteReward(actors, "model", 120)
    ds = make_shapes_dataset(5, seed=2)
    prompts, completions = list(ds["prompt"]), ["red", "blue", "3", "top left", "circle"]
    local = RewardModelScorer.from_paths([untrained_rm])(prompts, completions, images=list(ds["images"]))
    got = remote(prompts, completions, images=list(ds["images"]), log_metric=print)
    stop_actors(actors)  # their CPUs are the next test's
    assert got == pytest.approx(local, abs=1e-5)


@pytest.mark.slow
def test_grpo_through_ray_actors(tmp_path, warm_policy, untrained_rm):
    """Two steps of the hybrid scheme: 2 rollout actors + 1 reward-model actor, TRL learner, weight sync. The
    untrained reward model's scores spread by less than the hybrid's flat-group tolerance (noise, rightly
    given no advantage), so the tolerance is off here: the test is of the pipeline, not of the signal."""
    cfg = grpo.load(
        str(CONFIGS / "tiny_cpu_hybrid.yaml"),
        [
            f"output_dir={tmp_path}",
            f"policy.path={warm_policy}",
            f"reward.model.paths=[{untrained_rm}]",
            "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=8",
            "trainer.num_generations=4",
            "trainer.learning_rate=1e-3",
            "trainer.report_to=[]",
            "reward.min_group_std=0",
        ],
    )
    summary = grpo.main(cfg)
    assert summary["global_step"] == 2
    assert summary["rollout_version"] == 1  # synced before the second generation
    before, after = (
        load_file(Path(warm_policy) / "model.safetensors"),
        load_file(Path(summary["final_policy"]) / "model.safetensors"),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [r for r in summary["log_history"] if "rewards/hybrid/mean" in r]
    assert len(rows) == 2
    for key in ("timing/generate", "timing/reward/hybrid", "hybrid/decided_by_match", "rollout/tokens_per_s"):
        assert key in rows[0], key
    # Same float32 weights in the actors and the learner: only numerical noise between them.
    assert 0.0 <= rows[0]["rollout/logprob_gap_max"] < 1e-3
    assert "timing/weight_sync" in rows[1]


def test_actor_groups_use_placement_groups_and_resources(ray_local, untrained_rm):
    import ray

    from reward.rule import RuleMatcher

    group = ActorGroupConfig(num_actors=2, num_cpus=0.5, placement="STRICT_PACK")
    actors = start_group("rule", RuleMatcher, {}, group).ready()
    remote = RemoteReward(actors, "rule", 60)
    assert remote(["q"] * 3, ["red", "blue", "three"], answer=["red", "red", "3"]) == [1.0, 0.0, 1.0]
    for actor in actors:
        ray.kill(actor)
    with pytest.raises(ValueError, match="placement must be one of"):
        start_group("rule", RuleMatcher, {}, ActorGroupConfig(placement="TIGHT")).ready()


class Constructing:
    """An actor whose constructor takes `seconds` and remembers when it ran."""

    def __init__(self, seconds: float):
        import time

        self.began = time.time()
        time.sleep(seconds)
        self.ended = time.time()

    def span(self) -> tuple[float, float]:
        return self.began, self.ended


def test_actor_groups_construct_together_and_one_that_is_late_stops_them_all(ray_local):
    """A run's groups (rollout engines, reward scorers) are started before any is waited for: their
    constructors overlap. A group not ready within its ready_timeout_s is a clear error naming it, and
    every actor that was starting alongside is killed, not left behind."""
    import sys

    from ray import cloudpickle

    from pipeline.actors import await_ready, start_group

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module
    group = ActorGroupConfig(num_actors=1, num_cpus=0.5)
    first = start_group("first", Constructing, {"seconds": 3}, group)
    second = start_group("second", Constructing, {"seconds": 3}, group)
    await_ready([first, second])
    (began_1, ended_1), (began_2, _) = ray_local.get([first.actors[0].span.remote(), second.actors[0].span.remote()])
    assert began_2 < ended_1  # the second was constructing while the first still was
    stop_actors(first.actors + second.actors)

    quick = start_group("quick", Constructing, {"seconds": 0}, group)
    late = start_group(
        "late", Constructing, {"seconds": 600}, ActorGroupConfig(num_actors=1, num_cpus=0.5, ready_timeout_s=5)
    )
    with pytest.raises(TimeoutError, match=r"late: 1 actor\(s\) of .* not placed and constructed within 5s"):
        await_ready([quick, late])
    assert _dies_within(ray_local, quick.actors[0], seconds=30)


def _dies_within(ray, actor, seconds: float) -> bool:
    """ray.kill is asynchronous (a request to the GCS): a call sent right after it may still be served,
    so the actor is pinged until a call fails with RayActorError, or `seconds` pass."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            return False
        time.sleep(0.2)
    return False


class Received:
    """A reward that returns what reached it: per row, its prompt and the columns' names."""

    def __call__(self, prompts, completions, **columns):
        return [(p, sorted(columns)) for p in prompts]


def test_a_remote_reward_sends_only_the_columns_its_reward_reads(ray_local):
    """The rule matcher reads the completions and its answer column: the prompts and their images
    stay in the driver (they would cross the object store every step for nothing)."""
    import sys

    import ray
    from PIL import Image
    from ray import cloudpickle

    from reward.options import RuleOptions
    from reward.rule import columns_read

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module
    actors = start_group("received", Received, {}, ActorGroupConfig(num_actors=1, num_cpus=0.5)).ready()
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}]
    columns = {"answer": ["red", "blue"], "images": [[Image.new("RGB", (64, 64))]] * 2, "solution": ["r", "b"]}
    everything = RemoteReward(actors, "received", 60)([prompt, prompt], ["a", "b"], **columns)
    assert everything == [(prompt, ["answer", "images", "solution"])] * 2
    reads = columns_read(RuleOptions(answer_column="solution"))
    assert (
        RemoteReward(actors, "received", 60, reads=reads)([prompt, prompt], ["a", "b"], **columns)
        == [(None, ["solution"])] * 2
    )
    ray.kill(actors[0])


class SlowLength:
    """A reward that takes 2 s per call (time to kill its actor mid-call)."""

    def __call__(self, prompts, completions, **columns):
        import time

        time.sleep(2)
        return [float(len(c)) for c in completions]


def test_a_reward_actor_killed_mid_call_is_restarted_and_retried_then_the_budget_ends_it(ray_local):
    """A real SIGKILL of the actor process while it is scoring: Ray restarts it (max_restarts=1), the
    pool re-sends that shard and gets every value once; a second death exceeds max_restarts and is
    a clear ActorFailureError, not a hang."""
    import os
    import signal
    import sys
    import threading

    from ray import cloudpickle

    from rl.errors import ActorFailureError

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module
    group = ActorGroupConfig(num_actors=1, num_cpus=0.5, max_restarts=1, max_retries=2)
    actors = start_group("slow", SlowLength, {}, group).ready()
    remote = RemoteReward(actors, "slow", timeout_s=60, max_retries=group.max_retries)

    def kill_soon():
        pid = ray_local.get(actors[0].pid.remote())
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        return pid

    first_pid = kill_soon()
    assert remote(["q"] * 3, ["a", "bb", "ccc"]) == [1.0, 2.0, 3.0]
    assert remote.calls.restarts == 1 and ray_local.get(actors[0].pid.remote()) != first_pid
    kill_soon()
    with pytest.raises(ActorFailureError, match="could not be restarted"):
        remote(["q"], ["a"])


class SeedRecorder:
    """An engine that reports the seed each of its requests samples with (nothing generated)."""

    def weights_device(self):
        return "cpu"

    def generate(self, requests, sampling):
        from policies.rollout_engine import Rollout

        return [
            [Rollout([0], [sampling.request_seed(i) + j], [0.0], "", 0) for j in range(sampling.n)]
            for i in range(len(requests))
        ]


def test_every_prompt_and_sample_of_a_step_has_its_own_seed_across_actors_and_steps(ray_local):
    """Seeds per (step, actor, prompt, sample): actor i's share is seeded as the requests it takes, so no
    two samples of a step, on whichever actor, share a seed; nor do two steps' samples."""
    import sys

    from ray import cloudpickle

    from pipeline.rollout import sampling_from_trl

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pool = RolloutPool(
        spawn_rollout_actors(SeedRecorder, {}, ActorGroupConfig(num_actors=3, num_cpus=0.5)),
        RolloutConfig(timeout_s=60),
    )
    args = type("Args", (), dict(temperature=1.0, top_p=1.0, top_k=0, max_completion_length=4, seed=0))()
    seeds = []
    for step in range(3):
        groups = pool.generate(_requests(7), sampling_from_trl(args, 8, step))  # 7 prompts x 8 samples
        seeds += [r.completion_ids[0] for g in groups for r in g]
    assert len(seeds) == 3 * 7 * 8 == len(set(seeds))

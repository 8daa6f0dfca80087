"""Multi-node, for real: Ray's own multi-node harness (`ray.cluster_utils.Cluster`) runs a head and
worker raylets on this machine, each with its own CPUs and custom resource labels; the recipe joins
it as it would join `ray start --head` / `ray start --address` machines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from recipes import grpo

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the single-node fixture's cluster: this test needs its own
        ray.shutdown()
    # The GCS calls a node dead after health_check_failure_threshold missed checks, health_check_period_ms
    # apart (Ray's defaults: 5 x 3 s): a 3 s detector here, so the node-loss test waits for failover, not for it.
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    nodes = {
        "rollout": c.add_node(num_cpus=1, resources={"rollout_node": 2}),
        "reward": c.add_node(num_cpus=1, resources={"reward_node": 2}),
    }
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


class Record(TrainerCallback):
    """Where each actor group's actors run (asked at the end of training), and an optional action
    after a given step (a node failure)."""

    def __init__(self, groups: list, after_step: int | None = None, action=None):
        self.groups, self.after_step, self.action, self.nodes = groups, after_step, action, []

    def on_step_end(self, args, state, control, **kwargs):
        if self.action is not None and state.global_step == self.after_step:
            self.action()

    def on_train_end(self, args, state, control, **kwargs):
        import ray

        rollout_first = sorted(self.groups, key=lambda calls: calls.what != "rollout actors")
        self.nodes = [ray.get([a.node_id.remote() for a in calls.actors], timeout=60) for calls in rollout_first]


def _record_actor_groups(monkeypatch) -> list:
    from pipeline.actor_calls import ActorCalls

    groups: list = []
    init = ActorCalls.__init__
    monkeypatch.setattr(ActorCalls, "__init__", lambda self, *a, **k: (init(self, *a, **k), groups.append(self))[0])
    return groups


def _cfg(run: Path, policy: str, rm: str, *extra: str):
    return grpo.load(
        str(CONFIGS / "tiny_cpu_hybrid.yaml"),
        [
            f"output_dir={run}",
            f"policy.path={policy}",
            f"reward.model.paths=[{rm}]",
            "ray.enabled=true",
            "trainer.max_steps=3",
            "trainer.per_device_train_batch_size=4",
            "trainer.num_generations=2",
            "trainer.max_completion_length=4",
            "trainer.report_to=[]",
            "rollout.timeout_s=30",
            "reward.timeout_s=30",
            "rollout.actors.num_actors=2",
            "rollout.actors.num_cpus=0.5",
            "reward.actors.model.num_actors=1",
            "reward.actors.model.num_cpus=0.5",
            "reward.actors.model.resources={reward_node: 1}",
            *extra,
        ],
    )


def test_actors_go_where_their_labels_and_placement_groups_say(
    cluster, tmp_path, warm_policy, untrained_rm, monkeypatch
):
    c, nodes = cluster
    groups = _record_actor_groups(monkeypatch)
    record = Record(groups)
    summary = grpo.main(
        _cfg(
            tmp_path,
            warm_policy,
            untrained_rm,
            "rollout.actors.resources={rollout_node: 1}",
            "rollout.actors.placement=STRICT_PACK",
            "reward.actors.model.placement=SPREAD",
        ),
        callbacks=[record],
    )
    assert summary["global_step"] == 3
    rollout_nodes, scorer_nodes = record.nodes
    assert set(rollout_nodes) == {nodes["rollout"].node_id}  # both rollout actors, packed on their node
    assert scorer_nodes == [nodes["reward"].node_id]


def test_losing_a_node_ends_in_recovery_elsewhere_or_a_clean_abort_with_a_checkpoint(
    cluster, tmp_path, warm_policy, untrained_rm, monkeypatch
):
    """The rollout actors' node dies after step 1 (no graceful shutdown). With another node carrying
    their label, Ray restarts them there, the pool re-sends their work, and the run finishes. With no
    such node left: no hang, an ActorFailureError within the timeout, and a checkpoint to resume from."""
    from rl.errors import ActorFailureError

    c, nodes = cluster
    groups = _record_actor_groups(monkeypatch)
    pinned = ("rollout.actors.resources={rollout_node: 1}",)

    def fail_over():  # a second labelled node is up; the first one dies
        c.add_node(num_cpus=1, resources={"rollout_node": 2})
        c.remove_node(nodes["rollout"], allow_graceful=False)

    record = Record(groups, after_step=1, action=fail_over)
    summary = grpo.main(_cfg(tmp_path / "recovers", warm_policy, untrained_rm, *pinned), callbacks=[record])
    assert summary["global_step"] == 3 and summary["actor_restarts"] >= 1
    assert nodes["rollout"].node_id not in record.nodes[0]

    groups.clear()
    last = [n for n in c.worker_nodes if n.node_id not in (nodes["rollout"].node_id, nodes["reward"].node_id)][0]
    record = Record(groups, after_step=1, action=lambda: c.remove_node(last, allow_graceful=False))
    start = time.monotonic()
    with pytest.raises(ActorFailureError):  # Ray cannot place the restart: the pool waits rollout.timeout_s for it
        grpo.main(
            _cfg(
                tmp_path / "aborts",
                warm_policy,
                untrained_rm,
                *pinned,
                "checkpoint.every_steps=1",
                "rollout.timeout_s=10",
            ),
            callbacks=[record],
        )
    assert time.monotonic() - start < 240
    assert (tmp_path / "aborts" / "checkpoints" / "latest").read_text() == "step-1"

"""A learner on two Ray Train workers (gloo, on CPU): DDP, FSDP2 and DeepSpeed ZeRO-3 through accelerate as TRL
runs them, rank 0 generating for both on the rollout actors, checkpoints and resume, a worker's death."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import pipeline
from pipeline.distributed import split_output
from recipes import grpo
from rl.config import ConfigError
from rl.errors import LearnerWorkerError

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def test_a_generation_is_handed_back_to_each_rank_in_the_order_it_came():
    out = {
        "prompt_ids": [[1], [2], [3], [4], [5]],
        "completion_ids": [[6], [7], [8], [9], [10]],
        "logprobs": [[0.1]] * 5,
        "policy_version": [3] * 5,
    }
    first, second = split_output(out, [2, 3])
    assert first["prompt_ids"] == [[1], [2]] and second["completion_ids"] == [[8], [9], [10]]
    with pytest.raises(ValueError, match="the ranks sent 6"):
        split_output(out, [3, 3])


def test_a_multi_worker_learner_needs_ray_and_actors_and_a_known_strategy():
    with pytest.raises(ConfigError, match="ray.enabled: true"):
        pipeline.check(grpo.load(None, ["learner.num_workers=2"]))
    with pytest.raises(ConfigError, match="learner.num_workers: 1"):
        pipeline.check(grpo.load(None, ["learner.num_workers=2", "ray.enabled=true", "rollout.colocate=true"]))
    with pytest.raises(ConfigError, match="must be one of .*deepspeed"):
        grpo.load(None, ["learner.strategy=zero3"])
    with pytest.raises(ConfigError, match="learner.strategy: deepspeed"):  # a DeepSpeed config under DDP
        pipeline.check(
            grpo.load(None, ["learner.num_workers=2", "ray.enabled=true", "trainer.deepspeed=ds_zero3.json"])
        )


def _cfg(run: Path, policy: str, *extra: str):
    """Tiny GRPO through the Ray pipeline (a rollout actor, the rule reward); 8 rollouts per step."""
    return grpo.load(
        str(CONFIGS / "tiny_cpu_rule.yaml"),
        [
            f"output_dir={run}",
            f"policy.path={policy}",
            "ray.enabled=true",
            "rollout.actors.num_cpus=1",
            "trainer.per_device_train_batch_size=8",
            "trainer.num_generations=4",
            "trainer.max_completion_length=6",
            "trainer.learning_rate=2e-3",
            "trainer.report_to=[]",
            *extra,
        ],
    )


def _final(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["final_policy"]) / "model.safetensors")


def test_two_ddp_workers_train_as_one_worker_on_the_same_global_batch(tmp_path, warm_policy, untrained_rm, ray_local):
    """The hybrid pipeline (rule + a reward-model actor) with the learner on two gloo workers, 4
    rollouts each, against one learner with all 8: rank 0 generates the same rollouts for both (the
    ranks' prompts gathered in order), so after 3 steps the weights agree to float tolerance: the two
    runs' updates of every tensor differ by under 0.1% of the update (AdamW divides by the root of the
    squared gradients, so where a gradient is near zero the summation order of DDP's all-reduce shows;
    measured: 6e-5 at most)."""
    hybrid = [
        "reward.scheme=hybrid",
        f"reward.model.paths=[{untrained_rm}]",
        "reward.actors.model.num_cpus=0.5",
        "trainer.max_steps=3",
    ]
    one = grpo.main(_cfg(tmp_path / "one", warm_policy, *hybrid))
    two = grpo.main(
        _cfg(
            tmp_path / "two",
            warm_policy,
            *hybrid,
            "learner.num_workers=2",
            "learner.num_cpus_per_worker=0.5",
            "trainer.per_device_train_batch_size=4",
        )
    )
    assert two["learner_workers"] == 2 and two["global_step"] == 3 and two["rollout_version"] == 2
    rewards = [[r["reward"] for r in s["log_history"] if "reward" in r] for s in (one, two)]
    assert rewards[0] == pytest.approx(rewards[1]) and len(set(rewards[0])) > 1  # same rollouts, learning signal
    a, b, start = _final(one), _final(two), load_file(Path(warm_policy) / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the policy did train
    for key in a:  # frozen tensors (the vision tower) are equal; trained ones within 0.1% of their update
        assert (a[key] - b[key]).norm() <= 1e-3 * (a[key] - start[key]).norm(), key


def test_fsdp_workers_shard_the_policy_and_sync_the_gathered_weights(tmp_path, warm_policy, ray_local, monkeypatch):
    """FSDP2 on two CPU workers: the weights are sharded (each worker holds half), every rank takes part
    in gathering them for the rollout actor, and the actor then scores its own rollouts as the learner
    does (teacher-forced logprob gap measured on both ranks at once: < 1e-4 after every sync). The
    config's paths are relative, as users write them: the workers resolve them where the run started."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy").symlink_to(warm_policy)
    summary = grpo.main(
        _cfg(
            Path("run"),
            "policy",
            "learner.num_workers=2",
            "learner.strategy=fsdp",
            "learner.num_cpus_per_worker=0.5",
            "trainer.per_device_train_batch_size=4",
            "trainer.max_steps=3",
            "checkpoint.every_steps=3",
        )
    )
    assert summary["global_step"] == 3 and summary["rollout_version"] == 2
    assert (tmp_path / "run" / "summary.json").is_file()
    rows = [r for r in summary["log_history"] if "rollout/logprob_gap_max" in r]
    assert len(rows) == 3 and all(r["rollout/logprob_gap_max"] < 1e-4 for r in rows)
    start, final = load_file(Path(warm_policy) / "model.safetensors"), _final(summary)
    assert any(not torch.equal(final[k], v) for k, v in start.items())  # it trained
    checkpoint = Path(summary["last_checkpoint"])
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "rng_state_1.pth").is_file()


def test_zero3_workers_shard_the_policy_sync_the_gathered_weights_and_resume_bit_exactly(
    tmp_path, warm_policy, ray_local
):
    """DeepSpeed ZeRO-3 on two CPU workers: weights, gradients and AdamW state partitioned between them
    (each rank checkpoints its own optimizer partition), every rank taking part in gathering the weights
    for the rollout actor (which then scores its rollouts as the learner does: gap < 1e-4 after every
    sync), and a resume from DeepSpeed's step-2 checkpoint ends bit-identical. (That ZeRO-3 trains the
    weights one learner does, to 6.1e-4 of the update over 10 steps, is benchmarks/learner_workers.py.)"""
    zero3 = [
        "learner.num_workers=2",
        "learner.strategy=deepspeed",
        "learner.num_cpus_per_worker=0.5",
        "trainer.per_device_train_batch_size=4",
        "trainer.max_steps=3",
        "checkpoint.every_steps=2",
    ]
    straight = grpo.main(_cfg(tmp_path / "straight", warm_policy, *zero3))
    assert straight["learner_workers"] == 2 and straight["global_step"] == 3 and straight["rollout_version"] == 2
    gaps = [r["rollout/logprob_gap_max"] for r in straight["log_history"] if "rollout/logprob_gap_max" in r]
    assert len(gaps) == 3 and max(gaps) < 1e-4
    start, final = load_file(Path(warm_policy) / "model.safetensors"), _final(straight)
    assert any(not torch.equal(final[k], v) for k, v in start.items())  # it trained
    halfway = Path(straight["last_checkpoint"]).parent / "step-2"
    partitions = sorted(p.name for p in (halfway / "global_step2").glob("*optim_states.pt"))
    assert len(partitions) == 2, partitions  # one optimizer partition per rank
    resumed = grpo.main(_cfg(tmp_path / "resumed", warm_policy, *zero3, f"resume={halfway}"))
    assert resumed["resumed_from"] == str(halfway) and resumed["global_step"] == 3
    again = _final(resumed)
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_resume_with_two_workers_is_bit_exact(tmp_path, warm_policy, ray_local):
    two = [
        "learner.num_workers=2",
        "learner.num_cpus_per_worker=0.5",
        "trainer.per_device_train_batch_size=4",
        "trainer.max_steps=4",
        "checkpoint.every_steps=2",
    ]
    straight = grpo.main(_cfg(tmp_path / "straight", warm_policy, *two))
    halfway = Path(straight["last_checkpoint"]).parent / "step-2"
    resumed = grpo.main(_cfg(tmp_path / "resumed", warm_policy, *two, f"resume={halfway}"))
    assert resumed["resumed_from"] == str(halfway) and resumed["global_step"] == 4
    a, b = _final(straight), _final(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


class DieAtStep(TrainerCallback):
    """Kills the process of learner worker `rank` when step `step` begins (as a crash would)."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_begin(self, args, state, control, **kwargs):
        import os

        import torch.distributed as dist

        if state.global_step == self.step and dist.get_rank() == self.rank:
            os._exit(1)


def test_a_learner_worker_that_dies_ends_the_run_with_its_last_checkpoint(tmp_path, warm_policy, ray_local, caplog):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    cfg = _cfg(
        tmp_path,
        warm_policy,
        "learner.num_workers=2",
        "learner.num_cpus_per_worker=0.5",
        "trainer.per_device_train_batch_size=4",
        "trainer.max_steps=4",
        "checkpoint.every_steps=1",
    )
    start = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(LearnerWorkerError, match="learner worker"):
        grpo.main(cfg, callbacks=[DieAtStep(rank=1, step=2)])
    assert time.monotonic() - start < 300  # ended by Ray Train's failure handling, not a collective's timeout
    assert "checkpoints/step-2" in caplog.text and "resume=auto" in caplog.text
    assert (tmp_path / "checkpoints" / "step-2" / "trainer_state.json").is_file()


def test_each_learner_worker_reports_its_own_gpu_not_the_nodes_first():
    """Ray Train shows a node's workers all of the node's GPUs for the run; rank r trains on its own (the index
    `ray.train.torch.get_device()` gives), which is the GPU the weight sync must be told about."""
    import torch

    from pipeline.distributed import rank_gpus

    assert rank_gpus(["2", "5"], torch.device("cuda", 1)) == ["5"]
    assert rank_gpus(["2", "5"], torch.device("cuda", 0)) == ["2"]
    assert rank_gpus([], torch.device("cuda", 1)) == ["1"]  # no mask: CUDA's own numbering
    assert rank_gpus(["0", "1"], torch.device("cpu")) == []

"""Overlapped (one-step-off-policy) rollouts: step t+1 generated while the learner trains on step t."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rl.learner import EpochSeededRepeatSampler
from rl.pool import RolloutPool
from rl.rollout import ActorRollouts

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def test_epoch_order_predicts_what_the_sampler_will_yield():
    sampler = EpochSeededRepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=1)
    predicted = [sampler.epoch_order(e) for e in range(3)]
    for e in range(3):
        sampler.set_epoch(e)
        assert list(sampler) == predicted[e]
    assert len(predicted[0]) == 2 * 3 * 2  # two full batches of 3 distinct prompts, each twice


def test_overlap_needs_a_staleness_bound_of_at_least_one_step():
    with pytest.raises(ValueError, match="with rollout.overlap causes \\(1\\)"):
        ActorRollouts(pool=RolloutPool.__new__(RolloutPool), max_staleness=0, overlap=True)


@pytest.mark.ray
@pytest.mark.slow
def test_overlapped_rollouts_finish_with_bounded_staleness_and_correct_prefetches(tmp_path, warm_policy, caplog):
    from recipes import grpo
    from rl.cli import load_recipe_config

    cfg = load_recipe_config("grpo", str(CONFIGS / "tiny_cpu_rule.yaml"), [
        f"output_dir={tmp_path}", f"policy.path={warm_policy}", "data.train_size=4", "trainer.max_steps=5",
        "trainer.per_device_train_batch_size=4", "trainer.num_generations=2", "trainer.max_completion_length=4",
        "trainer.report_to=[]", "ray.enabled=true", "ray.num_cpus=2", "rollout.actors.num_cpus=1",
        "rollout.overlap=true", "rollout.max_staleness=1"])
    with caplog.at_level(logging.WARNING, logger="rl.rollout"):
        summary = grpo.main(cfg)
    assert summary["global_step"] == 5
    lags = [r["rollout/version_lag"] for r in summary["log_history"] if "rollout/version_lag" in r]
    # Step 0 is generated on the spot; every later step was generated one version behind, ahead of
    # time, across two epoch boundaries (2 steps per epoch), with the prompts TRL then asked for.
    assert lags == [0, 1, 1, 1, 1]
    assert "do not match" not in caplog.text
    assert summary["rollout_version"] == 4

"""Overlapped (one-step-off-policy) rollouts: step t+1 generated while the learner trains on step t."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters.trl import EpochSeededRepeatSampler
from pipeline.rollout import ActorRollouts

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def test_epoch_order_predicts_what_the_sampler_will_yield():
    sampler = EpochSeededRepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=1)
    predicted = [sampler.epoch_order(e) for e in range(3)]
    for e in range(3):
        sampler.set_epoch(e)
        assert list(sampler) == predicted[e]
    assert len(predicted[0]) == 2 * 3 * 2  # two full batches of 3 distinct prompts, each twice


def test_overlap_needs_a_staleness_bound_of_at_least_one_step():
    from rl.config import ConfigError, RolloutConfig

    with pytest.raises(ConfigError, match="with rollout.overlap causes \\(1\\): set rollout.max_staleness: 1"):
        RolloutConfig(max_staleness=0, overlap=True)


@pytest.mark.ray
@pytest.mark.slow
def test_overlapped_rollouts_finish_with_bounded_staleness_and_correct_prefetches(tmp_path, warm_policy, caplog):
    from recipes import grpo

    cfg = grpo.load(
        str(CONFIGS / "tiny_cpu_rule.yaml"),
        [
            f"output_dir={tmp_path}",
            f"policy.path={warm_policy}",
            "data.train_size=4",
            "trainer.max_steps=5",
            "trainer.per_device_train_batch_size=4",
            "trainer.num_generations=2",
            "trainer.max_completion_length=4",
            "trainer.report_to=[]",
            "ray.enabled=true",
            "ray.num_cpus=2",
            "rollout.actors.num_cpus=1",
            "rollout.overlap=true",
            "rollout.max_staleness=1",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.rollout"):
        summary = grpo.main(cfg)
    assert summary["global_step"] == 5
    lags = [r["rollout/version_lag"] for r in summary["log_history"] if "rollout/version_lag" in r]
    # Step 0 is generated on the spot; every later step was generated one version behind, ahead of
    # time, across two epoch boundaries (2 steps per epoch), with the prompts TRL then asked for.
    assert lags == [0, 1, 1, 1, 1]
    assert "do not match" not in caplog.text
    assert summary["rollout_version"] == 4


class LocalPool:
    """The rollout pool's interface over one in-process engine (the Ray lane covers the real pool)."""

    def __init__(self, engine):
        self.engine, self.version = engine, 0

    def generate(self, requests, sampling):
        return self.engine.generate(requests, sampling)

    def load_weights(self, state, version):
        self.engine.load_weights(state, version)
        self.version = version


def _learner(tmp_path, policy, rollouts, train_size=8, **trainer):
    """TRL's GRPOTrainer (our GRPOLearner) on the tiny policy with the rule reward and `rollouts`."""
    from policies.loading import load_policy, load_processor
    from rl.config import RewardConfig
    from rl.learner import build_grpo_trainer, grpo_args
    from rl.rewards import build_rewards
    from rl.tasks.shapes import make_shapes_dataset

    args = grpo_args(
        str(tmp_path),
        0,
        {
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 4,
            "beta": 0.0,
            "report_to": [],
            **trainer,
        },
    )
    funcs, args.reward_weights = build_rewards(RewardConfig())
    return build_grpo_trainer(
        args,
        load_policy(policy),
        load_processor(policy),
        make_shapes_dataset(train_size, seed=0),
        funcs,
        rollout_func=rollouts,
    )


def test_overlap_predicts_the_prompts_of_every_step_with_gradient_accumulation(tmp_path, warm_policy, caplog):
    """2 micro-batches per optimizer step (TRL generates once per step for both), 3 steps per epoch:
    every step after the first is generated ahead, with exactly the prompts TRL then asks for, across
    the epoch boundary."""
    from policies.hf_engine import HFEngine

    lags = []

    class Recording(ActorRollouts):
        def __call__(self, prompts, trainer):
            out = super().__call__(prompts, trainer)
            lags.append([trainer.state.global_step - v for v in out["policy_version"]])
            return out

    rollouts = Recording(LocalPool(HFEngine(warm_policy)), max_staleness=1, logprob_gap_samples=0, overlap=True)
    trainer = _learner(
        tmp_path,
        warm_policy,
        rollouts,
        train_size=6,
        max_steps=5,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.rollout"):
        trainer.train()
    rollouts.close()
    assert trainer.args.steps_per_generation == 2 and trainer.state.global_step == 5
    assert [set(step) for step in lags] == [{0}, {1}, {1}, {1}, {1}]  # generated one version behind, ahead
    assert "do not match" not in caplog.text


@pytest.mark.parametrize("correct", [True, False])
def test_correct_off_policy_makes_the_engines_logprobs_the_old_policy_the_loss_sees(tmp_path, warm_policy, correct):
    """Weights synced every 2 steps, so step 2's rollouts come from the step-0 weights. With the
    correction the loss's "old" log-probs are exactly the engine's (the behaviour policy), not the
    learner's; without it TRL uses the learner's own (no old log-probs in the inputs)."""
    import torch

    from adapters.trl import GRPOLearner
    from policies.hf_engine import HFEngine

    seen, made = [], []
    engine = HFEngine(warm_policy)
    generate = engine.generate
    engine.generate = lambda requests, sampling: made.append(generate(requests, sampling)) or made[-1]
    rollouts = ActorRollouts(LocalPool(engine), sync_every=2, max_staleness=1, logprob_gap_samples=0)
    trainer = _learner(tmp_path, warm_policy, rollouts, max_steps=2, learning_rate=5e-2)
    trainer.rollout_logprobs_as_old = correct
    original = GRPOLearner.compute_loss

    def spy(self, model, inputs, *rest, **kw):
        seen.append({k: inputs.get(k) for k in ("old_per_token_logps", "completion_mask")})
        return original(self, model, inputs, *rest, **kw)

    trainer.compute_loss = spy.__get__(trainer)
    trainer.train()
    assert len(seen) == 2 and [g[0].version for g in made[-1]] == [0, 0]  # step 2 generated by version 0
    old = seen[-1]["old_per_token_logps"]
    if not correct:
        assert old is None
        return
    mask = seen[-1]["completion_mask"].bool()  # [B, T]; TRL shuffles the rows of a generation batch
    loss_rows = sorted(old[i][mask[i]].tolist() for i in range(old.shape[0]))
    engine_rows = sorted(torch.tensor(r.logprobs).tolist() for group in made[-1] for r in group)
    assert loss_rows == engine_rows

"""Pure logic of the TRL rollout hook: grouping, output format, sampling, staleness bounds."""

from types import SimpleNamespace

import pytest

from pipeline.rollout import (
    ActorRollouts,
    StaleRolloutError,
    group_prompts,
    sampling_from_trl,
    to_trl_output,
    version_lags,
)
from policies.rollout_engine import Rollout


def _msg(text):
    return [{"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": text}]}]


def test_group_prompts_takes_one_of_each_repeat_run():
    a, b = _msg("a"), _msg("b")
    assert group_prompts([a, a, a, b, b, b], 3) == [a, b]


def test_group_prompts_refuses_a_batch_that_is_not_made_of_runs():
    a, b = _msg("a"), _msg("b")
    with pytest.raises(ValueError, match="mixes different prompts"):
        group_prompts([a, b, a, b], 2)
    with pytest.raises(ValueError, match="cannot be split"):
        group_prompts([a, a, a], 2)


def _with_image(text, color):
    from PIL import Image

    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.new("RGB", (8, 8), color)}, {"type": "text", "text": text}],
        }
    ]


def test_prompts_with_the_same_question_and_different_images_are_different_prompts():
    # TRL builds every repeat anew (the images decoded again): equal pixels are the same prompt...
    assert len(group_prompts([_with_image("q", "red"), _with_image("q", "red")], 2)) == 1
    # ...while the same question about another image is not.
    with pytest.raises(ValueError, match="mixes different prompts"):
        group_prompts([_with_image("q", "red"), _with_image("q", "blue")], 2)


def test_to_trl_output_flattens_in_order():
    r = lambda i, v: Rollout([1, 2], [i], [-0.5], str(i), v)  # noqa: E731
    out = to_trl_output([[r(1, 0), r(2, 0)], [r(3, 1), r(4, 1)]])
    assert out["completion_ids"] == [[1], [2], [3], [4]]
    assert out["prompt_ids"] == [[1, 2]] * 4 and out["policy_version"] == [0, 0, 1, 1]
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs", "policy_version"}


def test_sampling_comes_from_trl_args():
    args = SimpleNamespace(temperature=0.7, top_p=0.9, top_k=None, max_completion_length=12, seed=5)
    s = sampling_from_trl(args, 8, step=3)
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_tokens) == (8, 0.7, 0.9, 0, 12)
    # The seed depends on (run seed, step) only: a resumed run draws what an uninterrupted one drew.
    assert s.seed == sampling_from_trl(args, 8, step=3).seed
    assert len({sampling_from_trl(args, 8, step=k).seed for k in range(100)}) == 100
    assert sampling_from_trl(SimpleNamespace(**{**vars(args), "seed": 6}), 8, step=3).seed != s.seed


def test_a_rollout_beyond_the_staleness_bound_is_an_error():
    groups = [[Rollout([1], [2], [-1.0], "x", version=v)] for v in (3, 2)]
    assert version_lags(3, groups, max_staleness=1) == [0, 1]
    with pytest.raises(StaleRolloutError, match="2 policy versions behind"):
        version_lags(4, groups, max_staleness=1)


def test_staleness_bound_must_allow_the_sync_period():
    from rl.config import ConfigError, RolloutConfig

    with pytest.raises(ConfigError, match="max_staleness"):
        RolloutConfig(sync_every=4, max_staleness=1)


def test_teacher_forced_logprobs_equal_the_engines_own(warm_policy):
    from policies.hf_engine import HFEngine, completion_logprobs
    from policies.rollout_engine import RolloutRequest, SamplingParams
    from rl.tasks.shapes import make_shapes_dataset

    engine = HFEngine(warm_policy)
    ds = make_shapes_dataset(3, seed=1)
    requests = [RolloutRequest(p, i) for p, i in zip(ds["prompt"], ds["images"])]
    groups = engine.generate(requests, SamplingParams(n=2, temperature=0.8, max_tokens=6, seed=0))
    for request, group in zip(requests, groups):
        for r in group:
            mine = completion_logprobs(engine.model, engine.processor, request, r.prompt_ids, r.completion_ids, 0.8)
            assert mine == pytest.approx(r.logprobs, abs=1e-4)


class _SlowSyncPool:
    """A pool whose weight load takes 0.3 s and whose generation is instant (timing attribution)."""

    version = 0

    def load_weights(self, state, version):
        import time

        time.sleep(0.3)
        self.version = version

    def generate(self, requests, sampling):
        return [[Rollout([1], [2], [-0.5], "x", version=self.version)] * sampling.n for _ in requests]


def test_weight_sync_time_is_not_counted_as_generation_time(monkeypatch):
    from collections import defaultdict

    import torch

    from pipeline import rollout

    metrics = defaultdict(list)
    monkeypatch.setattr(rollout, "log_metric", lambda trainer, name, value: metrics[name].append(value))
    model = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(
        state=SimpleNamespace(global_step=1),
        num_generations=2,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        model=model,
        processing_class=None,
        args=SimpleNamespace(temperature=1.0, top_p=1.0, top_k=None, max_completion_length=4, seed=0),
    )
    rollouts = ActorRollouts(_SlowSyncPool(), sync_every=1, max_staleness=0, logprob_gap_samples=0)
    out = rollouts([_msg("a"), _msg("a")], trainer)
    assert metrics["timing/weight_sync"][0] >= 0.3 and metrics["timing/generate"][0] < 0.1
    assert out["policy_version"] == [1, 1]

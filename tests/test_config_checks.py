"""Every check that can refuse a GRPO config runs before anything starts, in one pass, with one error type:
each bad config below is a ConfigError from loading it and `recipes.grpo.check`, and none of them starts
Ray, loads a model or reads data (the fixture fails the test if one tries)."""

from __future__ import annotations

import pytest

from recipes import grpo
from rl.config import ConfigError

BAD_CONFIGS = {  # overrides -> what the error says
    "rollout.backend=trt": "rollout.backend must be one of",
    "rollout.overlap=true": "with rollout.overlap causes \\(1\\): set rollout.max_staleness: 1",
    "rollout.sync_every=3 rollout.max_staleness=1": "below the lag",
    "rollout.sync_every=0": "rollout.sync_every must be >= 1",
    "rollout.weight_sync=nvlink": "rollout.weight_sync must be one of",
    "rollout.weight_sync=vllm_nccl": "needs rollout.backend=vllm",
    "rollout.backend=vllm rollout.weight_transfer=nccl": "merged into rollout.weight_sync",
    "rollout.bucket_mb=0": "rollout.bucket_mb must be > 0",
    "rollout.colocate=true": "rollout.colocate is an option of the Ray pipeline",
    "ray.enabled=true rollout.colocate=true rollout.backend=vllm": "rollout.colocate works with rollout.backend=hf",
    "ray.enabled=true rollout.colocate=true rollout.overlap=true rollout.max_staleness=1": "between steps only",
    "learner.num_workers=2": "set ray.enabled: true",
    "learner.strategy=zero9": "learner.strategy must be one of",
    "reward.scheme=oracle": "reward.scheme must be one of",
    "reward.hybrid_with=rule": "reward.hybrid_with must be one of",
    "reward.min_group_std=-0.1": "reward.min_group_std must be >= 0",
    "reward.scheme=model": "needs reward.model.paths",
    "reward.scheme=judge": "needs reward.judge.path",
    "reward.scheme=model reward.model.paths=[/nonexistent/rm]": "reward.model.paths",
    "policy.vision_lr=1e-4 policy.freeze_vision=true": "vision_lr",
    "policy.dtype=bfloat16": "rounded away",
    "ray.enabled=true ray.num_gpus=1 rollout.actors.num_gpus=2": "GPU",
    "ray.enabled=true ray.num_cpus=2 rollout.actors.num_actors=4 rollout.actors.num_cpus=1": "CPU",
    "trainer.not_an_option=1": "not_an_option",
}


@pytest.fixture()
def nothing_starts(monkeypatch):
    """Fail the test if Ray starts, a policy or reward model loads, or data is read."""
    import ray

    import policies.loading
    import rl.data

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} during a config check")

        return fail

    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(policies.loading, "load_policy", refuse("a policy load"))
    monkeypatch.setattr(rl.data, "load_rl_splits", refuse("a data load"))
    monkeypatch.setattr(grpo, "load_rl_splits", refuse("a data load"))
    monkeypatch.setattr(grpo, "load_policy", refuse("a policy load"))


@pytest.mark.parametrize("overrides, message", list(BAD_CONFIGS.items()), ids=list(BAD_CONFIGS))
def test_a_bad_config_is_refused_before_anything_starts(overrides, message, nothing_starts):
    with pytest.raises(ConfigError, match=message):
        grpo.check(grpo.load(None, overrides.split()))


def test_an_untested_vllm_is_refused_before_anything_starts_saying_what_to_install(nothing_starts, monkeypatch):
    import adapters.vllm

    monkeypatch.setattr(adapters.vllm, "installed_vllm", lambda: "0.33.1")
    with pytest.raises(ConfigError, match=r"vLLM 0.33.1 is installed.*pip install -e '.\[vllm\]' \(vllm==0.32.\*\)"):
        grpo.check(grpo.load(None, ["rollout.backend=vllm"]))
    monkeypatch.setattr(adapters.vllm, "installed_vllm", lambda: "0.32.0")
    grpo.check(grpo.load(None, ["rollout.backend=vllm"]))  # the tested version passes


def test_a_good_config_passes_the_same_checks(nothing_starts):
    grpo.check(grpo.load(None, ["ray.enabled=true", "ray.num_cpus=2", "reward.scheme=rule"]))

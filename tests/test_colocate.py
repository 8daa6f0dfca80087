"""`rollout.colocate`: the transformers engine on the learner's own model, in its process, with no
copy of the weights and no sync."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.colocated import ColocatedPool, check_colocate
from pipeline.weight_sync.export import PolicyWeights
from policies.hf_engine import HFEngine
from policies.rollout_engine import RolloutRequest, SamplingParams
from rl.config import ConfigError, RolloutConfig
from rl.tasks.shapes import make_shapes_dataset

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def test_a_colocated_config_that_cannot_work_is_refused():
    check_colocate(RolloutConfig(colocate=True), ray_enabled=True)
    with pytest.raises(ConfigError, match="ray.enabled"):
        check_colocate(RolloutConfig(colocate=True), ray_enabled=False)
    with pytest.raises(ConfigError, match="rollout.backend=hf"):
        check_colocate(RolloutConfig(colocate=True, backend="vllm"), ray_enabled=True)
    with pytest.raises(ConfigError, match="overlap=false and rollout.sync_every=1"):
        check_colocate(RolloutConfig(colocate=True, overlap=True, max_staleness=1), ray_enabled=True)


def _requests():
    ds = make_shapes_dataset(3, seed=5)
    return [RolloutRequest(p, imgs) for p, imgs in zip(ds["prompt"], ds["images"])]


def test_the_colocated_engine_generates_with_the_learners_live_weights(warm_policy):
    from policies.loading import load_policy, load_processor

    model = load_policy(warm_policy).train()
    pool = ColocatedPool(model, load_processor(warm_policy))
    assert pool.engine.model is model and model.training  # no copy; the learner's mode is left as it was
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    requests = _requests()
    first = [g[0].completion_ids for g in pool.generate(requests, greedy)]
    assert model.training
    assert first == [g[0].completion_ids for g in HFEngine(warm_policy).generate(requests, greedy)]
    with torch.no_grad():  # an optimizer step, in place: the engine sees it with no sync
        for name, p in model.named_parameters():
            if "visual" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    changed = [g[0].completion_ids for g in pool.generate(requests, greedy)]
    reference = HFEngine(warm_policy)
    reference.load_weights(PolicyWeights(model), version=1)
    assert changed != first and changed == [g[0].completion_ids for g in reference.generate(requests, greedy)]
    pool.load_weights(PolicyWeights(model), version=4)
    assert {r.version for g in pool.generate(requests, greedy) for r in g} == {4}


def test_bfloat16_generation_on_float32_masters_runs_under_autocast(warm_policy):
    from policies.loading import load_policy, load_processor

    model = load_policy(warm_policy)
    pool = ColocatedPool(model, load_processor(warm_policy), torch.bfloat16)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    pool.generate(_requests(), SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=0))
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the masters are untouched


@pytest.mark.ray
def test_grpo_with_a_colocated_engine_trains_with_no_rollout_actors(tmp_path, warm_policy, untrained_rm):
    from recipes import grpo

    cfg = grpo.load(
        str(CONFIGS / "tiny_cpu_hybrid.yaml"),
        [
            f"output_dir={tmp_path}",
            f"policy.path={warm_policy}",
            f"reward.model.paths=[{untrained_rm}]",
            "rollout.colocate=true",
            "ray.num_cpus=2",
            "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=8",
            "trainer.num_generations=4",
            "trainer.report_to=[]",
        ],
    )
    summary = grpo.main(cfg)
    assert summary["global_step"] == 2 and summary["rollout_version"] == 1 and summary["actor_restarts"] == 0
    rows = [r for r in summary["log_history"] if "rollout/logprob_gap_max" in r]
    # The engine is the learner's model: its logprobs are the learner's own (float32 on the CPU).
    assert len(rows) == 2 and all(r["rollout/logprob_gap_max"] < 1e-4 for r in rows)
    assert all(r["rollout/version_lag"] == 0 for r in rows)


def test_the_colocated_engine_follows_its_model_where_the_trainer_moves_it(warm_policy):
    """The pool is built before the Trainer moves the policy to `args.device` (cuda:0 on a GPU): an engine
    that fixed its device at construction would feed CPU inputs to a model on the GPU. `meta` stands in for
    the GPU here: the move is real, only the device differs."""
    from policies.loading import load_policy, load_processor

    model = load_policy(warm_policy)
    pool = ColocatedPool(model, load_processor(warm_policy))
    assert pool.engine.device == torch.device("cpu")
    model.to("meta")  # what Trainer(model=...) does with the learner's model after the pool exists
    assert pool.engine.device == torch.device("meta") and pool.engine.weights_device() == "meta"
    assert pool.engine._encode(_requests()[:1])["input_ids"].device == torch.device("meta")

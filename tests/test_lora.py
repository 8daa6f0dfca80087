"""Memory knobs on the tiny policy: LoRA (PEFT, through TRL's peft_config) with merged-weight sync to
the rollout engines, and the frozen vision tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

peft = pytest.importorskip("peft")

from pipeline.weight_sync.export import PolicyWeights  # noqa: E402
from policies.hf_engine import HFEngine  # noqa: E402
from policies.rollout_engine import RolloutRequest, SamplingParams  # noqa: E402
from recipes import grpo  # noqa: E402
from rl.tasks.shapes import make_shapes_dataset  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"
LORA = "policy.lora={r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj, up_proj, down_proj]}"


def test_merged_lora_weights_give_an_engine_the_adapted_policy(warm_policy):
    """PolicyWeights(peft model) loaded into a plain engine: same logits and greedy tokens as the
    adapted model, while the training model's own weights are left exactly as they were."""
    from policies.loading import load_policy

    torch.manual_seed(0)
    model = peft.get_peft_model(
        load_policy(warm_policy),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )  # random A and B
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in PolicyWeights(model).items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing merged in place
    engine = HFEngine(warm_policy)
    assert state.keys() == engine.state_dict().keys()
    engine.load_weights(state, version=1)

    ds = make_shapes_dataset(3, seed=4)
    requests = [RolloutRequest(p, imgs) for p, imgs in zip(ds["prompt"], ds["images"])]
    inputs = engine._encode(requests)
    with torch.no_grad():
        ours, theirs = engine.model(**inputs).logits, model(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    plain = HFEngine(warm_policy).model(**inputs).logits
    assert not torch.allclose(plain, theirs, atol=1e-3)  # the adapter does change the policy
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6)
    adapted = HFEngine(model.merge_and_unload(), engine.processor)
    assert [g[0].completion_ids for g in engine.generate(requests, greedy)] == [
        g[0].completion_ids for g in adapted.generate(requests, greedy)
    ]


def _cfg(run: Path, policy: str, *extra: str):
    return grpo.load(
        str(CONFIGS / "tiny_cpu_rule.yaml"),
        [
            f"output_dir={run}",
            f"policy.path={policy}",
            "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=8",
            "trainer.num_generations=4",
            "trainer.max_completion_length=6",
            "trainer.report_to=[]",
            *extra,
        ],
    )


@pytest.mark.ray
@pytest.mark.slow
def test_lora_grpo_through_a_rollout_actor_syncs_the_merged_policy(tmp_path, warm_policy):
    summary = grpo.main(
        _cfg(
            tmp_path,
            warm_policy,
            LORA,
            "trainer.learning_rate=2e-2",
            "ray.enabled=true",
            "ray.num_cpus=2",
            "rollout.actors.num_cpus=1",
        )
    )
    assert summary["global_step"] == 2 and summary["rollout_version"] == 1
    final = Path(summary["final_policy"])
    adapter = load_file(final / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # the adapter trained
    # Step 2's rollouts came from the actor after it loaded the merged step-1 policy: the learner
    # (base + adapter) scores those tokens as the actor did. A missing or wrong merge shows here.
    rows = [r for r in summary["log_history"] if "rollout/logprob_gap_max" in r]
    assert rows[1]["rollout/logprob_gap_max"] < 1e-4


def test_a_frozen_vision_tower_is_unchanged_by_training_with_gradient_checkpointing(tmp_path, warm_policy):
    summary = grpo.main(
        _cfg(
            tmp_path,
            warm_policy,
            "policy.freeze_vision=true",
            "trainer.learning_rate=1e-2",
            "trainer.gradient_checkpointing=true",
        )
    )
    before = load_file(Path(warm_policy) / "model.safetensors")
    after = load_file(Path(summary["final_policy"]) / "model.safetensors")
    vision = [k for k in before if k.startswith(("visual.", "model.visual."))]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in vision)  # the LM did train

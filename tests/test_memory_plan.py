"""`brl plan`: GPU memory per GPU from the model's dimensions and the config, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.memory_plan import GiB, check_fits, plan_for
from recipes import grpo
from recipes.cli import main as cli
from rl.config import ConfigError
from rl.learner import grpo_args

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"
GPU_CONFIGS = sorted(p.name for p in CONFIGS.glob("gpu_*.yaml") if "_rm_" not in p.name)


def _plan(config: str, *overrides: str, gpus: int = 8, gib: float = 80):
    cfg = grpo.load(str(CONFIGS / config), list(overrides))
    return plan_for(cfg, grpo_args(cfg.output_dir, cfg.seed, dict(cfg.trainer)), gpus, int(gib * GiB))


@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_every_shipped_gpu_config_fits_80_gb_gpus_with_margin(config, capsys):
    assert cli(["plan", str(CONFIGS / config), "--gpu-memory-gib", "80"]) == 0  # `brl plan`, as a user runs it
    out = capsys.readouterr().out
    assert "DOES NOT FIT" not in out and "GPU 0: learner" in out
    learner_total = float(out.split("GPU 1:")[0].strip().splitlines()[-1].split()[0])
    assert learner_total < 0.9 * 80  # at least 10% to spare on the learner's GPU


def test_the_learner_items_follow_the_model_and_the_config():
    plans, header = _plan("gpu_grpo_qwen25vl3b_vllm.yaml")
    assert "3.75B parameters (0.67B vision), 3.09B trained, float32 weights, bf16 compute" in header
    items = {i.name.split(" (")[0]: i.gib for i in plans[0].items}
    # 3.75B float32 weights; 3.09B trained (vision frozen): fp32 gradients, two fp32 AdamW moments.
    assert items["policy weights"] == pytest.approx(3.7546e9 * 4 / GiB, rel=1e-3)
    assert items["gradients"] == pytest.approx(3.0859e9 * 4 / GiB, rel=1e-3)
    assert items["AdamW state"] == pytest.approx(2 * items["gradients"])
    # micro-batch 8 x 1,024 completion tokens x 151,936 vocabulary, bf16 logits + a copy + fp32 log-softmax
    assert items["completion logits"] == pytest.approx(8 * 1024 * 151936 * 8 / GiB)


def test_a_config_that_cannot_fit_is_refused_naming_its_largest_item_and_the_knob():
    # The GPU configs as they were: bfloat16 weights (for the arithmetic) and micro-batches of 64 rollouts.
    plans, _ = _plan(
        "gpu_grpo_qwen25vl3b_vllm.yaml",
        "trainer.per_device_train_batch_size=64",
        "trainer.gradient_accumulation_steps=1",
    )
    with pytest.raises(
        ConfigError,
        match=r"GPU 0 \(learner \(1 GPU\)\) would need \d+\.\d GiB of its 80 GiB\. The "
        r"largest item is completion logits \(64 x 1024 x 151936 vocabulary\): "
        r"74\.2 GiB; to shrink it: a smaller trainer\.per_device_train_batch_size",
    ):
        check_fits(plans)


def test_fractional_shares_of_one_gpu_add_up_on_it():
    plans, _ = _plan(
        "gpu_grpo_qwen25vl3b_hybrid.yaml",
        "policy.lora={r: 16}",
        "policy.dtype=bfloat16",
        "learner.gpus_per_worker=0.5",
        "rollout.actors.num_actors=1",
        "rollout.actors.num_gpus=0.25",
        "reward.actors.model.num_gpus=0.25",
        gpus=1,
    )
    (gpu,) = plans
    assert sorted(o.split(" (")[0] for o in gpu.occupants) == ["learner", "reward model actor 0", "rollout actor 0"]
    assert any(i.name.startswith("reward model actor 0: reward model weights") for i in gpu.items)
    assert gpu.total == sum(i.bytes for i in gpu.items)


def test_a_vllm_engine_takes_its_memory_share_or_its_weights_plus_a_fixed_kv_cache():
    def engine_items(*overrides):
        (_, rollout_gpu, *_), _ = _plan("gpu_grpo_qwen25vl3b_vllm.yaml", "rollout.dtype=bfloat16", *overrides)
        return {i.name.split(" (")[0]: i.bytes for i in rollout_gpu.items}

    assert engine_items() == {"vLLM engine": int(0.85 * 80 * GiB)}  # the config's gpu_memory_utilization
    fixed = engine_items("rollout.vllm.kv_cache_memory_bytes=4294967296")
    assert fixed == {"vLLM engine weights": pytest.approx(3.7546e9 * 2, rel=1e-3), "vLLM KV cache": 4 * GiB}


def test_fsdp_learner_workers_hold_a_shard_and_ddp_workers_a_whole_copy_plus_buckets():
    config = "gpu_grpo_qwen25vl3b_8gpu_fsdp.yaml"
    (fsdp, *_), _ = _plan(config)
    (ddp, *_), _ = _plan(config, "learner.strategy=ddp")
    (one, *_), _ = _plan(config, "learner.num_workers=1")
    sharded = {i.name.split(" (")[0]: i.bytes for i in fsdp.items}
    whole = {i.name.split(" (")[0]: i.bytes for i in one.items}
    for name in ("policy weights", "gradients", "AdamW state"):
        assert sharded[name] == pytest.approx(whole[name] / 4, rel=1e-6)  # 4 workers, one quarter each
    assert "FSDP: gathered units" in sharded and not any(i.name.startswith("DDP") for i in fsdp.items)
    buckets = next(i for i in ddp.items if i.name.startswith("DDP gradient buckets"))
    assert buckets.bytes == whole["gradients"] and ddp.total > fsdp.total + 40 * GiB


def test_zero3_learner_workers_hold_a_bf16_shard_and_float32_masters_of_their_partition():
    """ZeRO-3 under bf16 keeps the module in bf16 and float32 masters in its optimizer, each 1/4 per worker."""
    config = "gpu_grpo_qwen25vl3b_8gpu_fsdp.yaml"
    (zero3, *_), _ = _plan(config, "learner.strategy=deepspeed")
    (one, *_), _ = _plan(config, "learner.num_workers=1")
    sharded = {i.name.split(" (")[0]: i.bytes for i in zero3.items}
    whole = {i.name.split(" (")[0]: i.bytes for i in one.items}
    assert sharded["policy weights"] == pytest.approx(whole["policy weights"] / 2 / 4, rel=1e-6)  # bf16, 1/4
    assert sharded["float32 master weights, kept by the optimizer"] == pytest.approx(whole["gradients"] / 4, rel=1e-6)
    for name in ("gradients", "AdamW state"):
        assert sharded[name] == pytest.approx(whole[name] / 4, rel=1e-6)
    assert "ZeRO-3: gathered parameters" in sharded and zero3.fits

"""Run layouts the GPU lane (tests/gpu) runs on a GPU and the CPU tests run on Ray's logical GPUs: one
list of overrides for both, so the CPU twin checks the very config the GPU lane will run."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"
ONE_GPU_HYBRID_CONFIG = str(CONFIGS / "gpu_grpo_qwen25vl3b_hybrid.yaml")


def one_gpu_hybrid(output_dir: Path, policy: str, reward_model: str) -> list[str]:
    """gpu_grpo_qwen25vl3b_hybrid.yaml on one GPU: the learner (LoRA on a bf16 base) with 0.4 of it, one
    rollout actor and the scorer actor with 0.3 each; 3 GRPO steps of 8 rollouts x 128 tokens."""
    return [
        f"output_dir={output_dir}",
        f"policy.path={policy}",
        f"reward.model.paths=[{reward_model}]",
        "data.source=shapes",
        "data.train_size=64",
        "policy.max_pixels=3136",
        "policy.dtype=bfloat16",
        "policy.lora={r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}",
        "ray.num_cpus=8",
        "learner.gpus_per_worker=0.4",
        "rollout.actors.num_actors=1",
        "rollout.actors.num_gpus=0.3",
        "rollout.actors.num_cpus=2",
        "rollout.actors.placement=null",
        "reward.actors.model.num_gpus=0.3",
        "reward.actors.model.num_cpus=2",
        "reward.model.batch_size=16",
        "trainer.max_steps=3",
        "trainer.per_device_train_batch_size=8",
        "trainer.gradient_accumulation_steps=1",
        "trainer.num_generations=4",
        "trainer.max_completion_length=128",
        "trainer.save_strategy=no",
        "trainer.report_to=[]",
        "trainer.learning_rate=1e-5",
    ]

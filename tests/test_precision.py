"""Mixed precision that learns: float32 master weights with bf16 compute move every weight at RL learning
rates; 16-bit trained weights would lose most updates, and such a config is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recipes import grpo

CONFIG = str(Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml")


def test_float32_master_weights_with_bf16_compute_move_every_weight_a_gradient_reaches(
    tmp_path, warm_policy, share_updated
):
    assert torch.backends.cpu.get_cpu_capability() != "DEFAULT"  # bf16 autocast on this CPU
    assert share_updated(tmp_path, warm_policy, "float32") >= 0.99


def test_16_bit_trained_weights_are_refused_and_would_lose_the_updates(tmp_path, warm_policy, share_updated):
    with pytest.raises(
        ValueError,
        match=r"policy\.dtype=bfloat16 keeps the trained weights in bfloat16.*"
        r"learning_rate=1e-06 most weights\s+would never move.*policy\.dtype: float32",
    ):
        share_updated(tmp_path, warm_policy, "bfloat16")
    # Why: the same step on bf16 weights (what the check refuses), done by hand.
    from policies.loading import load_policy

    model = load_policy(warm_policy, "bfloat16")
    weights = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in weights]
    for p in weights:
        p.grad = torch.full_like(p, 1e-3)  # a gradient everywhere: Adam's first step moves each by ~lr
    torch.optim.AdamW(weights, lr=1e-6, weight_decay=0.0).step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(weights, before)) / sum(p.numel() for p in weights)
    assert changed < 0.5


def test_lora_on_a_16_bit_base_is_allowed():
    from rl.learner import check_update_precision

    cfg = grpo.load(CONFIG, ["policy.dtype=bfloat16", "policy.lora={r: 8}"])
    check_update_precision(cfg.policy, cfg.trainer, "policy")  # adapters train in float32

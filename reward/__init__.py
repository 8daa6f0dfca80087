"""Pluggable rewards with TRL's reward-function signature: rule, BaseReward model, hybrid, custom."""

from reward.base import Reward, completion_text
from reward.failures import FailureStats, GuardedReward, RewardFailureError
from reward.hybrid import HybridReward, hybrid_value, sigmoid
from reward.options import HeadConfig, RewardModelOptions, RuleOptions
from reward.rule import FormatReward, RuleMatcher, extract_answer, normalize

__all__ = [
    "BaseRewardModel",
    "RewardModelScorer",
    "FailureStats",
    "FormatReward",
    "GuardedReward",
    "HeadConfig",
    "HybridReward",
    "Reward",
    "RewardFailureError",
    "RuleMatcher",
    "RuleOptions",
    "RewardModelOptions",
    "completion_text",
    "extract_answer",
    "hybrid_value",
    "normalize",
    "sigmoid",
]


def __getattr__(name: str):
    # The model-backed rewards import torch/transformers; load them only when asked for.
    if name == "BaseRewardModel":
        from reward.model import BaseRewardModel

        return BaseRewardModel
    if name == "RewardModelScorer":
        from reward.scorer import RewardModelScorer

        return RewardModelScorer
    raise AttributeError(f"module 'reward' has no attribute {name!r}")

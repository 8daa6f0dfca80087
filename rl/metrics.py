"""Metrics that TRL's scalar logging cannot carry: the distribution of reward-model scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def score_histograms(reward_funcs: list[Any], args: Any, output_dir: Path, rank0: bool = True) -> list[TrainerCallback]:
    """A `ScoreHistogramCallback` for the hybrid reward among `reward_funcs` (GuardedRewards), when the run
    reports to TensorBoard (rank 0 only); else none."""
    from reward.hybrid import HybridReward

    hybrid = next((f.fn for f in reward_funcs if isinstance(f.fn, HybridReward)), None)
    if hybrid is None or "tensorboard" not in (args.report_to or []) or not rank0:
        return []
    return [ScoreHistogramCallback(hybrid, Path(output_dir) / "runs" / "reward_scores")]


class ScoreHistogramCallback(TrainerCallback):
    """Writes a TensorBoard histogram of the raw BaseReward scores the hybrid reward computed since the
    previous log step (`hybrid/model_scores`); the recipe puts it under `<output_dir>/runs/reward_scores`,
    beside TRL's own run directory, so TensorBoard shows it as a run of its own."""

    def __init__(self, hybrid: Any, log_dir: str | Path, tag: str = "hybrid/model_scores"):
        from torch.utils.tensorboard import SummaryWriter

        self.hybrid, self.tag = hybrid, tag
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_log(self, args, state, control, **kwargs):
        scores, self.hybrid.score_log[:] = list(self.hybrid.score_log), []
        if scores:
            import torch

            self.writer.add_histogram(self.tag, torch.tensor(scores), global_step=state.global_step)
            self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.writer.close()

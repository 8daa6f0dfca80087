"""Metrics that TRL's scalar logging cannot carry: the distribution of reward-model scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback


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

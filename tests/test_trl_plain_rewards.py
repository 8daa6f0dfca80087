"""Every reward here is also a plain TRL reward function: 2 steps of stock GRPOTrainer with each."""

import pytest
from trl import GRPOConfig, GRPOTrainer

from policies.loading import load_policy, load_processor
from reward import FormatReward, HybridReward, RewardModelScorer, RuleMatcher
from rl.tasks.shapes import make_shapes_dataset


def _args(tmp_path):
    return GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
    )


@pytest.mark.parametrize("kind", ["rule", "format", "model", "hybrid", "custom"])
def test_reward_as_a_plain_trl_reward_function(kind, tmp_path, warm_policy, untrained_rm):
    seen_columns = {}

    def custom(prompts, completions, answer, task, **kwargs):  # dataset columns arrive as kwargs
        seen_columns.update(answer=answer, task=task)
        return [float(len(c[0]["content"]) > 2) for c in completions]

    reward = {
        "rule": lambda: RuleMatcher(),
        "format": lambda: FormatReward(),
        "model": lambda: RewardModelScorer.from_paths([untrained_rm]),
        "hybrid": lambda: HybridReward(RuleMatcher(), RewardModelScorer.from_paths([untrained_rm])),
        "custom": lambda: custom,
    }[kind]()
    trainer = GRPOTrainer(
        model=load_policy(warm_policy),
        reward_funcs=[reward],
        args=_args(tmp_path),
        train_dataset=make_shapes_dataset(16, seed=4),
        processing_class=load_processor(warm_policy),
    )
    trainer.train()
    name = getattr(reward, "__name__", type(reward).__name__)
    logged = [row for row in trainer.state.log_history if f"rewards/{name}/mean" in row]
    assert len(logged) == 2
    if kind == "custom":
        assert len(seen_columns["answer"]) == 4 and set(seen_columns["task"]) <= {"color", "shape", "count", "position"}

"""The in-process vertical slice: TRL GRPOTrainer on the tiny policy with the rule reward."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from recipes import grpo

CONFIG = str(Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml")


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


def test_two_grpo_steps_change_the_policy_and_write_metrics(tmp_path, warm_policy):
    cfg = grpo.load(
        CONFIG,
        [f"output_dir={tmp_path}", f"policy.path={warm_policy}", "trainer.max_steps=2", "trainer.learning_rate=1e-3"],
    )
    summary = grpo.main(cfg)

    assert summary["global_step"] == 2
    before, after = _weights(warm_policy), _weights(summary["final_policy"])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # Saved in Qwen2.5-VL's checkpoint layout: "model.layers.*" (language model), "visual.*" (vision tower).
    assert any(k.startswith("model.layers.") for k in changed), "the language model did not move"
    assert any(k.startswith("visual.") for k in before)
    assert not any(k.startswith("visual.") for k in changed), "the frozen vision tower moved"

    logged = [row for row in summary["log_history"] if "rewards/rule/mean" in row]
    assert len(logged) == 2
    assert any(row["reward_std"] > 0 for row in logged), "no reward variance: GRPO had nothing to learn from"
    # Groups whose rewards all tie get zero advantage in TRL; the share of them stays visible.
    assert all(0.0 <= row["frac_reward_zero_std"] <= 1.0 for row in logged)
    assert list(tmp_path.rglob("events.out.tfevents*")), "no TensorBoard event file was written"
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "summary.json").is_file()


def test_hybrid_run_writes_a_histogram_of_model_scores(tmp_path, warm_policy, untrained_rm):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = grpo.load(
        CONFIG,
        [
            f"output_dir={tmp_path}",
            f"policy.path={warm_policy}",
            "reward.scheme=hybrid",
            f"reward.model.paths=[{untrained_rm}]",
            "trainer.max_steps=2",
        ],
    )
    summary = grpo.main(cfg)
    rows = [r for r in summary["log_history"] if "rewards/hybrid/mean" in r]
    assert len(rows) == 2 and all("hybrid/decided_by_model" in r for r in rows)
    events = EventAccumulator(str(tmp_path / "runs" / "reward_scores"), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("hybrid/model_scores")
    assert [h.step for h in histograms] == [1, 2]
    assert all(h.histogram_value.num > 0 for h in histograms)

"""Rewards from config: custom callables by module or file path, the guard around each, aborts."""

import asyncio
from pathlib import Path

import pytest

from reward.failures import RewardFailureError
from rl.config import CustomRewardConfig, RewardConfig
from rl.rewards import build_rewards, load_callable, make_custom_reward


def test_load_callable_from_module_and_file(tmp_path):
    assert load_callable("reward.rule:RuleMatcher").__name__ == "RuleMatcher"
    f = tmp_path / "mine.py"
    f.write_text("def shout(prompts, completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    fn = load_callable(f"{f}:shout")
    assert fn(["q", "q"], ["HI", "hi"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "spec,error",
    [
        ("no_colon", "must look like"),
        ("missing_module_xyz:f", "cannot import"),
        ("reward.rule:nope", "has no attribute"),
        ("/no/such/file.py:f", "not found"),
    ],
)
def test_load_callable_errors_are_clear(spec, error):
    with pytest.raises((ValueError, ImportError, AttributeError, FileNotFoundError), match=error):
        load_callable(spec)


def test_classes_get_kwargs_and_functions_get_them_bound():
    fmt = make_custom_reward("reward.rule:FormatReward", {"pattern": "^ok$"})
    assert fmt(["q", "q"], ["ok", "no"]) == [1.0, 0.0]


def test_config_builds_guarded_rewards_with_weights_and_columns(tmp_path):
    f = tmp_path / "r.py"
    f.write_text("def task_is(prompts, completions, task, want, **kw):\n    return [float(t == want) for t in task]\n")
    cfg = RewardConfig(
        scheme="rule", weight=2.0, extra=[CustomRewardConfig(fn=f"{f}:task_is", weight=0.5, kwargs={"want": "color"})]
    )
    funcs, weights = build_rewards(cfg)
    assert [fn.__name__ for fn in funcs] == ["rule", "task_is"] and weights == [2.0, 0.5]
    out = asyncio.run(funcs[1](["q", "q"], ["a", "b"], task=["color", "shape"]))
    assert out == [1.0, 0.0]


def test_duplicate_names_and_unknown_schemes_are_errors():
    with pytest.raises(ValueError, match="unique"):
        build_rewards(RewardConfig(extra=[CustomRewardConfig(fn="reward.rule:RuleMatcher")]))
    with pytest.raises(ValueError, match="scheme"):
        RewardConfig(scheme="rules")


def test_a_broken_reward_stops_grpo_cleanly_with_a_resumable_checkpoint(tmp_path, warm_policy, capsys, caplog):
    f = tmp_path / "broken.py"
    f.write_text("def broken(prompts, completions, **kw):\n    raise RuntimeError('reward server down')\n")
    from recipes.cli import main as cli

    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"
    code = cli(
        [
            "grpo",
            str(config),
            f"output_dir={tmp_path / 'run'}",
            f"policy.path={warm_policy}",
            "reward.scheme=none",
            f"reward.extra=[{{fn: '{f}:broken'}}]",
            "trainer.max_steps=2",
            "trainer.report_to=[]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "reward 'broken' failed on 8 of 8 samples" in err and "Traceback" not in err
    saved = tmp_path / "run" / "checkpoints" / "step-0"
    assert (saved / "model.safetensors").is_file() and (saved / "optimizer.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-0" and "resume=auto" in caplog.text


def test_reward_failure_error_is_raised_by_the_guard_directly():
    from reward.failures import GuardedReward

    with pytest.raises(RewardFailureError):
        asyncio.run(GuardedReward(lambda p, c, **k: [float("nan")] * len(c), max_failure_rate=0.5)(["q"], ["a"]))


def test_a_missing_reward_model_is_a_clear_error_before_anything_starts(tmp_path, capsys):
    from recipes.cli import main as cli

    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_hybrid.yaml"
    code = cli(["grpo", str(config), f"output_dir={tmp_path}", f"reward.model.paths=[{tmp_path / 'nope'}]"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a reward-model checkpoint" in err and "brl train-rm" in err

"""What GRPO can learn from: groups whose rewards do not spread get no advantage (each scheme's tolerance on
its own scale), a run whose groups stay flat says so, and a policy collapsing onto few answers is measured
(pure logic: no model, no Ray)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from adapters.trl import NO_SIGNAL_STEPS, GRPOLearner, flat_groups
from evaluation.held_out import answer_spread, collapsed_tasks, is_collapsed, summarize
from rl.config import FLAT_GROUP_STD, ConfigError, RewardConfig


def test_noise_below_a_schemes_tolerance_is_a_flat_group_and_a_rule_spread_never_is():
    # Two groups of 4: a judge's verdicts differing by 1e-4 (the untrained tiny judge), and one right
    # answer among four under the rule.
    judge = torch.tensor([[0.5], [0.5001], [0.4999], [0.5]])
    rule = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    rewards = torch.cat([judge, rule])  # [8, 1]
    one = torch.ones(1)
    tol = RewardConfig(scheme="judge").flat_group_std()
    assert flat_groups(rewards, one, 4, tol).tolist() == [True] * 4 + [False] * 4
    assert flat_groups(rewards, one, 4, RewardConfig(scheme="rule").flat_group_std()).tolist() == [False] * 8
    # Unscored samples (NaN) are left out of their group's spread.
    assert flat_groups(torch.tensor([[1.0], [float("nan")], [1.0], [1.0]]), one, 4, 0.0).tolist() == [True] * 4


def test_each_scheme_has_its_own_default_tolerance_and_an_explicit_one_wins():
    assert set(FLAT_GROUP_STD) == {"rule", "judge", "model", "hybrid", "none"}
    assert RewardConfig(scheme="rule").flat_group_std() == 0.0
    assert RewardConfig(scheme="model").flat_group_std() > RewardConfig(scheme="judge").flat_group_std() > 0
    assert RewardConfig(scheme="judge", min_group_std=0.0).flat_group_std() == 0.0
    with pytest.raises(ConfigError, match="min_group_std"):
        RewardConfig(min_group_std=-1.0)


def test_a_run_whose_groups_stay_flat_warns_once(caplog):
    learner = GRPOLearner.__new__(GRPOLearner)  # the warning's bookkeeping only: no model needed
    learner.min_group_std = 0.02
    with caplog.at_level(logging.WARNING, logger="adapters.trl"):
        for share in [0.9] * (NO_SIGNAL_STEPS - 1) + [0.2] + [0.9] * (NO_SIGNAL_STEPS - 1):
            learner._warn_if_no_signal(share)
        assert not caplog.records  # never NO_SIGNAL_STEPS in a row
        for _ in range(2 * NO_SIGNAL_STEPS):
            learner._warn_if_no_signal(0.9)
    assert len(caplog.records) == 1 and "no learning signal" in caplog.records[0].message


def test_answer_spread_tells_a_collapsed_family_from_a_balanced_one():
    truths = ["red", "blue", "green", "yellow"] * 5
    balanced = answer_spread(truths, truths)
    assert balanced == {"top_share": 0.25, "distinct": 4.0, "truth_top_share": 0.25}
    collapsed = answer_spread(["Blue."] * 15 + ["red"] * 5, truths)  # normalised: "Blue." is "blue"
    assert collapsed["top_share"] == 0.75 and collapsed["distinct"] == 2.0
    assert is_collapsed(collapsed) and not is_collapsed(balanced)
    start, final = {"color": balanced, "shape": collapsed}, {"color": collapsed, "shape": collapsed}
    assert collapsed_tasks(start, final) == ["color"]  # shape had collapsed at the start already
    assert math.isnan(answer_spread([], [])["top_share"])


def test_summarize_reports_each_familys_spread():
    rows = [{"task": "color", "answer": a} for a in ("red", "blue", "red", "green")]
    result = summarize(rows, ["red", "red", "red", "red"], [1] * 4)
    color = result.per_task["color"]
    assert color["greedy"] == 0.5 and color["top_share"] == 1.0 and color["distinct"] == 1.0
    assert color["truth_top_share"] == 0.5

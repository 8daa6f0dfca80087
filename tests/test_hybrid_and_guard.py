import asyncio
import math
import time

import pytest

from reward.failures import GuardedReward, RewardFailureError
from reward.hybrid import HybridReward, hybrid_value, score_summary, sigmoid
from reward.rule import RuleMatcher


def test_sigmoid_is_stable():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert math.isclose(sigmoid(2.0), 1 / (1 + math.exp(-2.0)))


@pytest.mark.parametrize(
    "matched,score,expected",
    [
        (1.0, None, 1.0),  # a match needs no score
        (1.0, -5.0, 1.0),
        (0.0, 0.0, 0.5),
        (0.0, 2.0, 1 / (1 + math.exp(-2.0))),
        (None, -1.0, 1 / (1 + math.exp(1.0))),  # no ground truth: the model decides
        (0.0, None, None),  # the model could not score: unknown, not zero
    ],
)
def test_hybrid_formula(matched, score, expected):
    got = hybrid_value(matched, score)
    assert got == expected if expected is None else math.isclose(got, expected)


class RecordingScorer:
    def __init__(self, scores):
        self.scores = scores
        self.seen = []

    def __call__(self, prompts, completions, **columns):
        self.seen.append((list(completions), columns.get("answer")))
        return [self.scores[c] for c in completions]


def test_hybrid_scores_only_unmatched_and_logs_shares():
    scorer = RecordingScorer({"It is red.": 3.0, "blue": -2.0})
    metrics = {}
    hybrid = HybridReward(RuleMatcher(), scorer)
    out = hybrid(
        ["q"] * 3, ["red", "It is red.", "blue"], answer=["red"] * 3, log_metric=lambda k, v: metrics.__setitem__(k, v)
    )
    assert out[0] == 1.0
    assert math.isclose(out[1], sigmoid(3.0)) and math.isclose(out[2], sigmoid(-2.0))
    assert scorer.seen == [(["It is red.", "blue"], ["red", "red"])]  # columns sliced alongside
    assert math.isclose(metrics["hybrid/decided_by_match"], 1 / 3)
    assert math.isclose(metrics["hybrid/decided_by_model"], 2 / 3)
    assert metrics["hybrid/model_score_max"] == 3.0 and metrics["hybrid/model_score_min"] == -2.0


def test_hybrid_all_matched_calls_no_model():
    scorer = RecordingScorer({})
    assert HybridReward(RuleMatcher(), scorer)(["q"], ["red"], answer=["red"]) == [1.0]
    assert scorer.seen == []


def test_score_summary():
    s = score_summary([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] in (2.0, 3.0)
    assert score_summary([]) == {}


def broken_on(bad):
    def reward(prompts, completions, **kw):
        return [1 / 0 if c == bad else 1.0 for c in completions]

    return reward


def test_a_raising_sample_becomes_none_and_is_counted(caplog):
    metrics = {}
    guard = GuardedReward(broken_on("b"), max_failure_rate=0.5)
    out = asyncio.run(guard(["q"] * 3, ["a", "b", "c"], log_metric=lambda k, v: metrics.__setitem__(k, v)))
    assert out == [1.0, None, 1.0]
    assert guard.stats.raised == 1 and guard.stats.failed == 1 and guard.stats.unscored == 0
    assert metrics["rewards/reward/failed"] == 1.0
    assert "sample 1 raised ZeroDivisionError" in caplog.text


def test_nan_and_inf_become_none():
    guard = GuardedReward(lambda p, c, **k: [float("nan"), float("inf"), 0.5, None], max_failure_rate=1.0)
    assert asyncio.run(guard(["q"] * 4, ["a", "b", "c", "d"])) == [None, None, 0.5, None]
    assert guard.stats.non_finite == 2 and guard.stats.unscored == 1


def test_a_hanging_reward_times_out_per_sample():
    def slow_on_b(prompts, completions, **kw):
        if "b" in completions:
            time.sleep(3)
        return [1.0] * len(completions)

    guard = GuardedReward(slow_on_b, timeout_s=0.5, max_failure_rate=0.5)

    async def timed():  # timed inside the loop: asyncio.run() itself waits for abandoned threads
        start = time.monotonic()
        return await guard(["q"] * 3, ["a", "b", "c"]), time.monotonic() - start

    out, elapsed = asyncio.run(timed())
    assert out == [1.0, None, 1.0]
    assert guard.stats.timed_out == 1 and guard.stats.unscored == 0  # only sample 1 is lost
    assert elapsed < 2.5


def test_failure_rate_over_threshold_aborts_with_a_clear_message():
    guard = GuardedReward(lambda p, c, **k: [1 / 0 for _ in c], name="broken", max_failure_rate=0.25)
    with pytest.raises(RewardFailureError, match=r"reward 'broken' failed on 2 of 2 samples.*max_failure_rate"):
        asyncio.run(guard(["q", "q"], ["a", "b"]))


def test_wrong_length_is_a_failure_not_a_silent_misalignment():
    guard = GuardedReward(lambda p, c, **k: [1.0], max_failure_rate=1.0)
    # The batch returned 1 value for 2 completions; one-by-one retry recovers both.
    assert asyncio.run(guard(["q", "q"], ["a", "b"])) == [1.0, 1.0]


def test_the_guard_is_async_so_trl_runs_components_concurrently():
    from trl.trainer.utils import is_async_callable

    def slow(prompts, completions, **kw):
        time.sleep(0.5)
        return [1.0] * len(completions)

    a, b = GuardedReward(slow, name="a"), GuardedReward(slow, name="b")
    assert is_async_callable(a)

    async def both():
        return await asyncio.gather(a(["q"], ["x"]), b(["q"], ["x"]))

    start = time.monotonic()
    assert asyncio.run(both()) == [[1.0], [1.0]]
    assert time.monotonic() - start < 0.9  # two 0.5 s rewards overlapped

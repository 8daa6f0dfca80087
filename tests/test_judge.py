"""The generative judge: reading its verdicts, the prompts it answers, its training rows, and a verdict
it cannot read being a counted failure (pure logic and a scripted engine; the trained tiny judge is in
test_judge_training.py)."""

from __future__ import annotations

import asyncio
import math

import pytest

from policies.rollout_engine import Rollout
from reward.failures import GuardedReward
from reward.judge import (
    ANSWER_OPEN,
    GenerativeJudge,
    JudgeRequest,
    combined_score,
    judge_report,
    judge_requests,
    judge_training_rows,
    order_counts,
    row_scores,
    verdict_position,
    verdict_probability,
    verdict_text,
)
from reward.options import JudgeOptions

ONE, TWO = 11, 12  # the verdict tokens' ids in the scripted examples


def test_the_verdict_is_the_first_token_after_the_answer_tag_and_its_probability_is_renormalised():
    pieces = ["<think>", "ok", "</think>", "<", "answer", ">", " 1", "</answer>"]
    assert verdict_position(pieces) == 6
    top = [{}] * 6 + [{ONE: math.log(0.6), TWO: math.log(0.2), 99: math.log(0.2)}, {}]
    assert verdict_probability(pieces, top, ONE, TWO) == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
    only_one = [{}] * 6 + [{ONE: math.log(0.9)}, {}]  # "2" not among the top tokens: P("2") ~ 0
    assert verdict_probability(pieces, only_one, ONE, TWO) == pytest.approx(1.0)
    # No <answer>, or something other than 1/2 in it: unreadable.
    assert verdict_probability(["<think>", "hm"], [{}, {}], ONE, TWO) is None
    assert verdict_probability(["<answer>", "3"], [{}, {ONE: -1.0}], ONE, TWO) is None
    assert verdict_position(["<", "answer", ">"]) is None  # cut off right after the tag


def test_both_orders_average_into_the_probability_the_completion_is_better():
    assert combined_score(0.8) == 0.8
    assert combined_score(0.8, 0.4) == pytest.approx((0.8 + 0.6) / 2)  # second: P("1") with it as Response 2
    assert combined_score(0.5, 0.5) == 0.5


def test_each_completion_is_judged_against_its_reference_in_both_orders_or_alone_without_one():
    options = JudgeOptions(path="x")
    requests = judge_requests(
        options,
        "{question}|{answer1}|{answer2}",
        "{question}|{answer}",
        ["What color?", [{"role": "user", "content": "Count?"}]],
        ["red", "3"],
        [["img"], []],
        ["blue", None],
    )
    assert [(r.row, r.order, r.text, r.images) for r in requests] == [
        (0, "first", "What color?|red|blue", ["img"]),
        (0, "second", "What color?|blue|red", ["img"]),
        (1, "alone", "Count?|3", []),
    ]
    probabilities = [0.9, 0.3, None]
    scores = row_scores(requests, probabilities, 2)
    assert scores[0] == pytest.approx((0.9 + 0.7) / 2) and math.isnan(scores[1])  # an unreadable verdict: NaN
    assert (
        len(
            judge_requests(
                JudgeOptions(path="x", both_orders=False),
                "{question}{answer1}{answer2}",
                "{question}{answer}",
                ["q"],
                ["a"],
                [[]],
                ["b"],
            )
        )
        == 1
    )


def test_training_rows_teach_both_orders_so_no_position_can_be_a_favourite():
    rows = judge_training_rows(
        "What color?",
        ["img"],
        "red",
        "blue",
        "Q:{question} 1:{answer1} 2:{answer2}",
        "Q:{question} A:{answer}",
        with_pointwise=True,
        rationale="it is red",
    )
    texts = [r["prompt"][0]["content"][-1]["text"] for r in rows]
    targets = [r["completion"][0]["content"] for r in rows]
    assert texts == [
        "Q:What color? 1:red 2:blue",
        "Q:What color? 1:blue 2:red",
        "Q:What color? A:red",
        "Q:What color? A:blue",
    ]
    assert targets == [verdict_text(v, "it is red") for v in "1212"]
    assert (
        targets[0] == f"<think>it is red</think>{ANSWER_OPEN}1</answer>" and verdict_text("2") == "<answer>2</answer>"
    )
    assert all(r["images"] == ["img"] and r["prompt"][0]["content"][0]["type"] == "image" for r in rows)


class ScriptedEngine:
    """A rollout engine whose every answer is the given token pieces (one token each), with the verdict
    tokens' log-probabilities at each position."""

    def __init__(self, pieces: list[str], p_one: float = 0.7):
        self.pieces, self.p_one = pieces, p_one
        self.tokenizer = self
        self.calls = 0

    def encode(self, text, add_special_tokens=False):
        return [{"1": ONE, "2": TWO}[text]]

    def decode(self, ids):
        return self.pieces[ids[0]] if ids[0] < len(self.pieces) else {ONE: "1", TWO: "2"}[ids[0]]

    def generate(self, requests, sampling):
        self.calls += 1
        top = {ONE: math.log(self.p_one), TWO: math.log(1 - self.p_one)}
        return [
            [Rollout([0], list(range(len(self.pieces))), [], "".join(self.pieces), 0, "stop", [top] * len(self.pieces))]
            for _ in requests
        ]


def test_a_verdict_the_judge_cannot_read_is_a_counted_failure_not_a_zero():
    judge = GenerativeJudge(JudgeOptions(), engine=ScriptedEngine(["<think>", "no idea"]))
    guarded = GuardedReward(judge, max_failure_rate=1.0)
    out = asyncio.run(guarded(["What color?"], ["red"], reference=["blue"]))
    assert out == [None] and guarded.stats.non_finite == 1 and guarded.stats.failed == 1
    assert judge.metrics() == {
        "generated_tokens": 4.0,
        "verdicts": 2.0,
        "unparsed": 2.0,
        "readable": 0.0,
        "first_position": 0.0,
        "compared": 0.0,
        "consistent": 0.0,
    }
    assert set(judge.metrics().values()) == {0.0}  # drained


def test_a_readable_verdict_gives_the_probability_from_both_orders():
    engine = ScriptedEngine(["<", "answer", ">", "1", "</answer>"], p_one=0.7)
    judge = GenerativeJudge(JudgeOptions(batch_size=1), engine=engine)
    assert judge(["What color?"], ["red"], reference=["blue"]) == [pytest.approx((0.7 + 0.3) / 2)]
    assert engine.calls == 2  # batch_size 1: one generate call per order
    assert judge(["q"], ["red"], answer=["red"]) == [pytest.approx(0.5)]  # the answer column when no reference


def _both_orders(n: int) -> list[JudgeRequest]:
    return [JudgeRequest(row, order, "", []) for row in range(n) for order in ("first", "second")]


def test_a_judge_that_only_prefers_the_first_position_is_never_consistent():
    # Response 1 wins every verdict: in one order that is the policy's answer, in the other the reference.
    counts = order_counts(_both_orders(3), [0.9, 0.8] * 3)
    assert counts == {"readable": 6, "first_position": 6, "compared": 3, "consistent": 0}
    report = judge_report({**counts, "generated_tokens": 42, "verdicts": 6, "unparsed": 0}, pairs=3)
    assert report["first_position_rate"] == 1.0 and report["position_consistency"] == 0.0
    assert report["generated_tokens_per_pair"] == 14.0 and report["unparsed_rate"] == 0.0


def test_a_judge_that_follows_the_content_is_consistent_and_unbiased():
    # Row 0: the answer is better (Response 1 first, Response 2 second); row 1: the reference is.
    counts = order_counts(_both_orders(2), [0.9, 0.2, 0.1, 0.7])
    assert counts == {"readable": 4, "first_position": 2, "compared": 2, "consistent": 2}
    report = judge_report(counts, pairs=2)
    assert report["first_position_rate"] == 0.5 and report["position_consistency"] == 1.0


def test_an_unreadable_verdict_leaves_its_pair_out_of_consistency():
    counts = order_counts(_both_orders(2), [0.9, None, 0.1, 0.7])
    assert counts == {"readable": 3, "first_position": 2, "compared": 1, "consistent": 1}
    assert math.isnan(judge_report({}, pairs=2)["position_consistency"])  # nothing compared: no number

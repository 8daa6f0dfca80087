import pytest

from reward.options import RuleOptions
from reward.rule import FormatReward, RuleMatcher, extract_answer, extract_boxed, normalize


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Red", "red"),
        ("  RED.  ", "red"),
        ("top-left", "top left"),
        ("Top_Left!", "top left"),
        ("a circle", "circle"),
        ("The Circle.", "circle"),
        ("three", "3"),
        ("Three!", "3"),
        ("3.50", "3.50"),
        ("-3", "-3"),
        ("1/2", "1/2"),
        ("ＲＥＤ", "red"),  # full-width letters (NFKC)
        ("Straße", "strasse"),  # casefold
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_number_words_can_be_turned_off():
    assert normalize("three", number_words=False) == "three"


def test_units_are_ignored_only_when_configured():
    assert normalize("5 cm", units=["cm"]) == "5"
    assert normalize("5cm", units=["cm"]) == "5"
    assert normalize("5 cm") == "5 cm"


@pytest.mark.parametrize(
    "text,mode,expected",
    [
        ("I think <answer>red</answer>", "answer_tag", "red"),
        ("<answer>a</answer> then <answer>b</answer>", "answer_tag", "b"),
        ("no tag here", "answer_tag", None),
        ("so \\boxed{\\frac{1}{2}} done", "boxed", "\\frac{1}{2}"),
        ("\\boxed{unclosed", "boxed", None),
        ("line one\n\nfinal line\n", "last_line", "final line"),
        ("plain", "auto", "plain"),
        ("x <answer>4</answer>", "auto", "4"),
        ("x \\boxed{4}", "auto", "4"),
    ],
)
def test_extract(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extract_boxed_nested():
    assert extract_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"


@pytest.mark.parametrize(
    "completion,truth,expected",
    [
        ("red", "red", 1.0),
        ("Red.", "red", 1.0),
        ("three", "3", 1.0),
        ("top-left", "top left", 1.0),
        ("It is red.", "red", 0.0),  # phrasing is NOT forgiven by the rule: that is the point
        ("blue", "red", 0.0),
        ("<answer>It is red</answer>", "red", 0.0),
        ("Let me see. <answer>red</answer>", "red", 1.0),
        ("4", "3", 0.0),
    ],
)
def test_rule_matcher_values(completion, truth, expected):
    assert RuleMatcher()(["q"], [completion], answer=[truth]) == [expected]


def test_no_ground_truth_gives_none():
    assert RuleMatcher()(["q", "q"], ["red", "red"], answer=[None, "  "]) == [None, None]


def test_conversational_completions():
    completions = [[{"role": "assistant", "content": "red"}], [{"role": "assistant", "content": "blue"}]]
    assert RuleMatcher()(["q", "q"], completions, answer=["red", "red"]) == [1.0, 0.0]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "evil",
    [
        "(" * 200_000,
        "\\boxed{" * 100_000,
        "<answer>" * 50_000,
        "a" * 1_000_000 + "<answer>red</answer>",
        "-" * 500_000,
        "\u0000\uffff\U0010ffff" * 100_000,
    ],
)
def test_adversarial_inputs_finish_quickly(evil):
    RuleMatcher(RuleOptions(extract="auto"))(["q"], [evil], answer=["red"])
    FormatReward()(["q"], [evil])


def test_long_completion_keeps_its_final_answer():
    # Only the last max_chars are read: the answer at the end is still found.
    assert RuleMatcher()(["q"], ["x" * 100_000 + "<answer>red</answer>"], answer=["red"]) == [1.0]


def test_math_verify_equivalence():
    pytest.importorskip("math_verify")
    matcher = RuleMatcher(RuleOptions(extract="boxed", math_verify=True))
    assert matcher(["q", "q"], ["\\boxed{\\frac{1}{2}}", "\\boxed{0.4}"], answer=["0.5", "0.5"]) == [1.0, 0.0]


def test_format_reward():
    fmt = FormatReward()
    assert fmt(["q"] * 3, ["think <answer>red</answer>", "red", "<answer></answer>"]) == [1.0, 0.0, 0.0]


def test_unknown_extract_mode():
    with pytest.raises(ValueError, match="extract mode"):
        RuleOptions(extract="regex")

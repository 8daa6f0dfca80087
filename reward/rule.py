"""Rule-based rewards: exact answer matching after normalisation, and a format check.

Matching follows the SQuAD-style normaliser most RL-for-LLM code uses (case, punctuation, articles,
whitespace), plus number words ("three" == "3"), hyphens ("top-left" == "top left") and configured
unit suffixes. It does NOT forgive phrasing: "It is red." does not match "red" unless the answer is
extracted from a tag or a box. That strictness is the rule-based reward the paper compares against.

Every step is linear in the (bounded) input length, so no completion can hang the run; the optional
math-verify check carries its own time limit.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reward.base import completion_text
from reward.options import EXTRACT_MODES, RuleOptions

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}
# Anything that is not a letter, digit, whitespace, or a character that can belong to a number.
_PUNCT = re.compile(r"[^\w\s.\-/]", re.UNICODE)
_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:/\d+)?)\.?")


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces; None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """The answer part of a completion, or None when `mode` asks for a marker that is absent."""
    if mode == "whole":
        return text
    if mode == "last_line":
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    if mode in ("answer_tag", "auto"):
        tags = _ANSWER_TAG.findall(text)
        if tags:
            return tags[-1]
        if mode == "answer_tag":
            return None
    if mode in ("boxed", "auto"):
        boxed = extract_boxed(text)
        if boxed is not None or mode == "boxed":
            return boxed
    if mode == "auto":
        return text
    raise ValueError(f"unknown extract mode {mode!r}; use one of {EXTRACT_MODES}")


def normalize(text: str, number_words: bool = True, units: Iterable[str] = ()) -> str:
    """Canonical form for comparison: NFKC, casefold, no punctuation/articles, digits for number words."""
    s = unicodedata.normalize("NFKC", text).casefold()
    s = s.replace("_", " ")
    s = _PUNCT.sub(" ", s)
    tokens = []
    for tok in _SPACES.split(s):
        number = _NUMBER.fullmatch(tok)
        if number:  # keep signs, decimals and fractions; drop a sentence-final period
            tokens.append(number.group(1))
            continue
        # Words: strip punctuation at the ends, split hyphenated words (top-left -> top left).
        tokens.extend(t for t in tok.strip(".-/").replace("/", "-").split("-") if t.strip("."))
    tokens = [t for t in tokens if t not in _ARTICLES]
    if number_words:
        tokens = [_NUMBER_WORDS.get(t, t) for t in tokens]
    units = {u.casefold() for u in units}
    if units and len(tokens) >= 2 and tokens[-1] in units:
        tokens = tokens[:-1]
    if units and tokens:  # "5cm" -> "5"
        for u in units:
            m = re.fullmatch(rf"(-?\d+(?:\.\d+)?){re.escape(u)}", tokens[-1])
            if m:
                tokens[-1] = m.group(1)
                break
    return " ".join(tokens)


def _math_equal(pred: str, truth: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise ImportError("rule.math_verify=true needs the math extra: pip install 'basereward-rl[math]'") from e
    # math-verify's own timeouts use SIGALRM, which only works on the main thread.
    on_main = threading.current_thread() is threading.main_thread()
    kw = {} if on_main else {"parsing_timeout": None}
    gold, answer = parse(truth, **kw), parse(pred, **kw)
    return bool(verify(gold, answer, **({} if on_main else {"timeout_seconds": None})))


def columns_read(options: RuleOptions) -> tuple[str, ...]:
    """The reward columns a rule matcher with `options` reads besides the completions (not the prompts):
    all a remote caller needs to send it (pipeline/remote_reward.py)."""
    return (options.answer_column,)


class RuleMatcher:
    """1.0 if the completion's answer matches the ground truth, 0.0 if not, None with no ground truth.

    Built from its options (`reward.rule:` in a GRPO config)."""

    def __init__(self, options: RuleOptions | None = None):
        self.options = options or RuleOptions()
        self.__name__ = "rule"  # the name TRL logs this reward under

    def match(self, completion: str, truth: str) -> bool:
        o = self.options
        text = completion[-o.max_chars :]  # the answer is at the end; bound the work per item
        pred = extract_answer(text, o.extract)
        if pred is None:
            return False
        if normalize(pred, o.number_words, o.units) == normalize(truth, o.number_words, o.units):
            return True
        return o.math_verify and _math_equal(pred[: o.max_chars], truth)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        truths = columns.get(self.options.answer_column) or [None] * len(completions)
        return [
            None if t is None or not str(t).strip() else float(self.match(completion_text(c), str(t)))
            for c, t in zip(completions, truths, strict=True)
        ]


@dataclass
class FormatReward:
    """1.0 if the completion matches `pattern` (default: one <answer>...</answer> block at the end)."""

    pattern: str = r"^(?:(?!<answer>).)*<answer>(?:(?!</answer>).)+</answer>\s*$"
    max_chars: int = 4096

    def __post_init__(self) -> None:
        self.__name__ = "format"
        self._regex = re.compile(self.pattern, re.DOTALL)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        return [float(bool(self._regex.search(completion_text(c)[: self.max_chars]))) for c in completions]

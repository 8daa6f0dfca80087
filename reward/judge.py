"""A generative reward model as a reward: a chat vision-language model that writes a verdict.

The paradigm the BaseReward paper compares its Naive-RM against (R1-Reward's): given the question with
its images and two responses, the judge writes `<think>...</think><answer>1 or 2</answer>`. Here each
completion is judged against the row's reference answer, in both orders (R1-Reward is sensitive to the
order of the two responses; averaging the two cancels that bias), and its reward is the probability that
the completion is at least as good: read from the log-probabilities of the verdict token, P("1") /
(P("1") + P("2")), not from the one token sampled. Rows without a reference are judged alone (a
pointwise prompt: "1" = correct). A verdict that cannot be read (no `<answer>` before `max_tokens`, or
something other than 1 or 2 in it) is NaN, which the reward guard counts as a failure, never a 0.

The judge runs on a rollout engine (transformers generate or vLLM), in the learner's process or on Ray
actors of its own (`reward.actors.judge`). What it costs is reported per call (`metrics()`: tokens
generated, verdicts, unparsed ones): the efficiency half of the paper's argument, measured in the run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.chat import as_messages, embedded_images, message_text
from reward.base import completion_text
from reward.options import JudgeOptions

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
PAIRWISE_TEMPLATE = TEMPLATES / "r1_reward_pairwise.txt"  # R1-Reward's published prompt (its inference code)
POINTWISE_TEMPLATE = TEMPLATES / "pointwise.txt"
JUDGE_FILE = "judge.json"  # what a judge trained here records (its prompts), beside its weights
ANSWER_OPEN = "<answer>"
VERDICTS = ("1", "2")
# What a judge counts per call (summed across calls and actors): its cost, and how order sways it.
COUNTERS = ("generated_tokens", "verdicts", "unparsed", "readable", "first_position", "compared", "consistent")


# ---------------------------------------------------------------------------------------------
# Prompts and verdicts (pure)
# ---------------------------------------------------------------------------------------------


def question_text(prompt: Any) -> str:
    """The question a prompt asks: the text of its user turns (its images travel apart)."""
    return "\n".join(message_text(m) for m in as_messages(prompt) if m.get("role") == "user").strip()


def pairwise_prompt(template: str, question: str, first: str, second: str) -> str:
    return template.format(question=question, answer1=first, answer2=second)


def pointwise_prompt(template: str, question: str, answer: str) -> str:
    return template.format(question=question, answer=answer)


def judge_messages(text: str, n_images: int) -> list[dict]:
    """One user turn: the images first, then the judge's text (R1-Reward's layout)."""
    return [
        {"role": "user", "content": [*[{"type": "image", "text": None}] * n_images, {"type": "text", "text": text}]}
    ]


def verdict_position(pieces: list[str]) -> int | None:
    """The index of the verdict token among generated tokens (each decoded on its own): the first token
    with text after the last `<answer>` the judge opened. None if it never opened one."""
    text, after = "", None
    for i, piece in enumerate(pieces):
        if after is not None and piece.strip():
            return i
        text += piece
        if text.rstrip().endswith(ANSWER_OPEN):
            after = i
    return None


def verdict_probability(pieces: list[str], top_logprobs: list[dict[int, float]], one: int, two: int) -> float | None:
    """P(verdict "1") from the judge's distribution at its verdict token, renormalised over "1" and "2"
    (`one`, `two`: their token ids); None when there is no readable verdict."""
    at = verdict_position(pieces)
    if at is None or pieces[at].strip() not in VERDICTS or at >= len(top_logprobs):
        return None
    top = top_logprobs[at]
    p1, p2 = (math.exp(top[t]) if t in top else 0.0 for t in (one, two))
    return p1 / (p1 + p2) if p1 + p2 > 0 else None


def combined_score(first: float, second: float | None = None) -> float:
    """P(the completion is better) from its orders: `first` = P("1") with the completion as Response 1,
    `second` = P("1") with it as Response 2 (None: not asked). The two estimates, `first` and 1 - `second`,
    are averaged: an order bias of the judge cancels."""
    return first if second is None else (first + (1.0 - second)) / 2


@dataclass
class JudgeRequest:
    """One prompt the judge answers, and where its verdict goes: row `row`, as `order` ("first": the
    completion is Response 1; "second": Response 2; "alone": pointwise)."""

    row: int
    order: str
    text: str
    images: list[Any]


def judge_requests(
    options: JudgeOptions,
    pairwise: str,
    pointwise: str,
    prompts: list[Any],
    completions: list[Any],
    images: list[list[Any]],
    references: list[str | None],
) -> list[JudgeRequest]:
    """The prompts the judge answers for a batch of completions."""
    out = []
    for i, (prompt, completion, imgs, ref) in enumerate(zip(prompts, completions, images, references, strict=True)):
        question, answer = question_text(prompt), completion_text(completion)
        if options.mode == "pairwise" and ref is not None and str(ref).strip():
            out.append(JudgeRequest(i, "first", pairwise_prompt(pairwise, question, answer, str(ref)), imgs))
            if options.both_orders:
                out.append(JudgeRequest(i, "second", pairwise_prompt(pairwise, question, str(ref), answer), imgs))
        else:
            out.append(JudgeRequest(i, "alone", pointwise_prompt(pointwise, question, answer), imgs))
    return out


def row_scores(requests: list[JudgeRequest], probabilities: list[float | None], n: int) -> list[float]:
    """Each row's reward from the verdict probabilities of its requests (NaN: unreadable)."""
    by_row: dict[int, dict[str, float | None]] = {}
    for request, p in zip(requests, probabilities, strict=True):
        by_row.setdefault(request.row, {})[request.order] = p
    scores = []
    for i in range(n):
        orders = by_row.get(i, {})
        if not orders or any(p is None for p in orders.values()):
            scores.append(math.nan)
        else:
            alone = orders.get("alone")
            scores.append(alone if alone is not None else combined_score(orders["first"], orders.get("second")))
    return scores


def order_counts(requests: list[JudgeRequest], probabilities: list[float | None]) -> dict[str, int]:
    """How a judge treats the order of the two responses, as counts (summable across calls and actors):
    `readable` verdicts, `first_position` of them picking Response 1 (P("1") > 0.5), `compared` rows judged
    readably in both orders and `consistent` ones among them, whose two verdicts pick the same response.
    A judge that only prefers a position picks Response 1 in every verdict and is never consistent."""
    by_row: dict[int, dict[str, float]] = {}
    readable = first = 0
    for request, p in zip(requests, probabilities, strict=True):
        if p is None:
            continue
        readable += 1
        first += p > 0.5
        if request.order in ("first", "second"):
            by_row.setdefault(request.row, {})[request.order] = p
    both = [orders for orders in by_row.values() if len(orders) == 2]
    consistent = sum((orders["first"] > 0.5) != (orders["second"] > 0.5) for orders in both)
    return {"readable": readable, "first_position": first, "compared": len(both), "consistent": consistent}


def judge_report(counts: dict[str, float], pairs: int) -> dict[str, float]:
    """A judge's counters (`GenerativeJudge.metrics()`) over `pairs` judged, as rates: tokens generated
    and verdicts per pair, the unreadable share, the share of verdicts that pick Response 1 (0.5 for a
    judge without a position preference) and position consistency (the share of pairs judged the same
    way in both orders; 1.0 for a judge that order does not sway)."""

    def rate(num: str, den: str) -> float:
        return counts.get(num, 0.0) / counts[den] if counts.get(den) else math.nan

    return {
        "generated_tokens_per_pair": counts.get("generated_tokens", 0.0) / pairs if pairs else math.nan,
        "verdicts_per_pair": counts.get("verdicts", 0.0) / pairs if pairs else math.nan,
        "unparsed_rate": rate("unparsed", "verdicts"),
        "first_position_rate": rate("first_position", "readable"),
        "position_consistency": rate("consistent", "compared"),
    }


def verdict_text(verdict: str, rationale: str | None = None) -> str:
    """What a judge is trained to write: R1-Reward's output format, the rationale only where there is one."""
    think = f"<think>{rationale.strip()}</think>" if rationale and rationale.strip() else ""
    return f"{think}{ANSWER_OPEN}{verdict}</answer>"


def judge_training_rows(
    prompt: Any,
    images: list[Any],
    chosen: str,
    rejected: str,
    pairwise: str,
    pointwise: str,
    with_pointwise: bool = True,
    rationale: str | None = None,
) -> list[dict]:
    """A preference pair as the judge's SFT rows (TRL's conversational prompt-completion format, with the
    pair's images): the pair in both orders (verdict 1, then 2: a judge trained so cannot learn a favourite
    position), and, with `with_pointwise`, each response alone (chosen: 1, rejected: 2)."""
    question = question_text(prompt)

    def row(text: str, verdict: str) -> dict:
        return {
            "prompt": judge_messages(text, len(images)),
            "images": list(images),
            "completion": [{"role": "assistant", "content": verdict_text(verdict, rationale)}],
        }

    rows = [
        row(pairwise_prompt(pairwise, question, chosen, rejected), "1"),
        row(pairwise_prompt(pairwise, question, rejected, chosen), "2"),
    ]
    if with_pointwise:
        rows += [
            row(pointwise_prompt(pointwise, question, chosen), "1"),
            row(pointwise_prompt(pointwise, question, rejected), "2"),
        ]
    return rows


def read_templates(options: JudgeOptions) -> tuple[str, str]:
    """The pairwise and pointwise prompts: the options' files, else what the checkpoint records (a judge
    trained here), else the defaults (R1-Reward's published layout; the project's pointwise one)."""
    recorded: dict[str, str] = {}
    if options.path and (Path(options.path) / JUDGE_FILE).is_file():
        recorded = json.loads((Path(options.path) / JUDGE_FILE).read_text())
    pairwise = (
        Path(options.template).read_text()
        if options.template
        else recorded.get("pairwise_template") or PAIRWISE_TEMPLATE.read_text()
    )
    pointwise = (
        Path(options.pointwise_template).read_text()
        if options.pointwise_template
        else recorded.get("pointwise_template") or POINTWISE_TEMPLATE.read_text()
    )
    return pairwise, pointwise


def single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the judge's tokenizer splits the verdict {text!r} into {len(ids)} tokens: its probability "
            "cannot be read from one position"
        )
    return ids[0]


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------


class GenerativeJudge:
    """A TRL-compatible reward: each completion's probability of being at least as good as the row's
    reference, by a generative judge on a rollout engine (see the module docstring)."""

    def __init__(self, options: JudgeOptions, engine: Any = None):
        """`engine`: a rollout engine to judge on (default: one of `options.backend`, loaded from `options.path`)."""
        from policies.rollout_engine import SamplingParams

        if engine is None and not options.path:
            raise ValueError(
                "the generative judge needs reward.judge.path (a checkpoint, or a hub id such as "
                "yifanzhang114/R1-Reward)"
            )
        self.options = options
        self.engine = engine if engine is not None else _engine(options)
        self.tokenizer = self.engine.tokenizer
        self.pairwise, self.pointwise = read_templates(options)
        self.verdict_ids = tuple(single_token(self.tokenizer, v) for v in VERDICTS)
        self.sampling = SamplingParams(
            n=1,
            temperature=0.0,
            max_tokens=options.max_tokens,
            logprobs=False,
            top_logprobs=max(2, options.top_logprobs),
        )
        self._counts = dict.fromkeys(COUNTERS, 0)
        self.__name__ = "judge"  # the name TRL logs this reward under

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        n = len(completions)
        refs = columns.get(self.options.reference_column) or columns.get(self.options.answer_column) or [None] * n
        column_images = columns.get("images") or [None] * n
        images = [
            (embedded_images(p) if isinstance(p, list) else []) or list(col or [])
            for p, col in zip(prompts, column_images, strict=True)
        ]
        requests = judge_requests(self.options, self.pairwise, self.pointwise, prompts, completions, images, refs)
        probabilities = self.verdicts(requests)
        for key, value in order_counts(requests, probabilities).items():
            self._counts[key] += value
        return row_scores(requests, probabilities, n)

    def verdicts(self, requests: list[JudgeRequest]) -> list[float | None]:
        """P(verdict "1") of each request, None where unreadable, in batches of `options.batch_size`."""
        from policies.rollout_engine import RolloutRequest

        out: list[float | None] = []
        size = max(1, self.options.batch_size)
        for start in range(0, len(requests), size):
            part = requests[start : start + size]
            groups = self.engine.generate(
                [RolloutRequest(judge_messages(r.text, len(r.images)), r.images) for r in part], self.sampling
            )
            for request, group in zip(part, groups, strict=True):
                rollout = group[0]
                pieces = [self.tokenizer.decode([t]) for t in rollout.completion_ids]
                p = verdict_probability(pieces, rollout.top_logprobs, *self.verdict_ids)
                self._counts["generated_tokens"] += len(rollout.completion_ids)
                self._counts["verdicts"] += 1
                if p is None:
                    self._counts["unparsed"] += 1
                    log.warning(
                        "judge: no readable verdict in %r (row %d, %s)", rollout.text[-200:], request.row, request.order
                    )
                out.append(p)
        return out

    def metrics(self) -> dict[str, float]:
        """Counters of the calls since the last `metrics()`: tokens generated, verdicts written, unparsed, and
        the order counts (`order_counts`); `judge_report` turns them into rates."""
        counts, self._counts = self._counts, dict.fromkeys(self._counts, 0)
        return {k: float(v) for k, v in counts.items()}

    def shutdown(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if callable(shutdown):
            shutdown()


def _engine(options: JudgeOptions) -> Any:
    """The rollout engine the judge runs on (its backend), loaded from `options.path`."""
    if options.backend == "vllm":
        from policies.vllm_engine import VLLMEngine

        return VLLMEngine(
            options.path, dtype=options.dtype, max_pixels=options.max_pixels, engine_kwargs=dict(options.vllm)
        )
    from policies.hf_engine import HFEngine

    return HFEngine(options.path, dtype=options.dtype, device=options.device, max_pixels=options.max_pixels)

"""The options of every reward component, as plain dataclasses: declared once, here, and nothing else.

Each component is built from its options (`RuleMatcher(RuleOptions(...))`, `RewardModelScorer(RewardModelOptions(...))`,
`build_head(width, HeadConfig(...))`), and each options class is also a section of the recipes' configs
(`reward.rule:`, `reward.model:`, `head:`). This module imports no torch, so loading a config does not either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXTRACT_MODES = ("auto", "whole", "last_line", "answer_tag", "boxed")
ACTIVATIONS = ("silu", "relu", "tanh", "gelu")


@dataclass
class RuleOptions:
    """The rule matcher (reward/rule.py): where the answer is in a completion, and what counts as equal."""

    # Where the answer is in a completion: auto | whole | last_line | answer_tag | boxed
    extract: str = "auto"
    number_words: bool = True  # "three" == "3"
    units: list[str] = field(default_factory=list)  # suffixes to ignore when comparing ("cm", "kg")
    math_verify: bool = False  # symbolic equivalence through math-verify (extra: math)
    max_chars: int = 4096  # completions are cut to this many characters before matching (time bound)
    answer_column: str = "answer"  # the dataset column that holds the ground truth

    def __post_init__(self) -> None:
        if self.extract not in EXTRACT_MODES:
            raise ValueError(f"unknown extract mode {self.extract!r}; use one of {EXTRACT_MODES}")


@dataclass
class HeadConfig:
    """The BaseReward scalar head's shape (the paper's ablations: depth, width, activation)."""

    num_layers: int = 2  # the paper's best; 1 = a linear head
    hidden_size: int | None = None  # width of the hidden layers (None: the backbone's hidden size)
    activation: str = "silu"  # silu | relu | tanh | gelu

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"reward head needs at least 1 layer, got num_layers={self.num_layers}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; use one of {sorted(ACTIVATIONS)}")


@dataclass
class RewardModelOptions:
    """`reward.model`: the reward model the `model` and `hybrid` schemes score with. One name from config to
    log: the section `reward.model`, this class, `RewardModelScorer` (reward/scorer.py) built from it, its
    actors ("reward model actor 0"), TRL's `rewards/model/...` metrics. The checkpoint is a BaseReward or any
    published scalar layout (reward/layouts.py)."""

    # Reward-model checkpoint(s): one path, or several whose scores are averaged (the paper's ensemble).
    paths: list[str] = field(default_factory=list)
    # Optional text-only reward model that scores rows without images (the paper's routing).
    text_path: str | None = None
    batch_size: int = 16
    max_pixels: int | None = 200_704  # per image, before the processor (28*28*256)
    device: str | None = None  # None: cuda if this process has a GPU, else cpu
    # The weights' dtype when scoring: "auto" keeps the checkpoint's; "bfloat16" halves the memory and time of
    # a reward model saved in float32 (a BaseReward trained with float32 masters: 31 GB for the 7B).
    dtype: str = "auto"
    # Standardise scores with the mean/std stored in the checkpoint (else those of the first call's scores),
    # so that the hybrid's sigmoid puts a typical wrong answer near 0.5, well below a right answer's 1.0
    # (raw, the tiny BaseReward's wrong answers got sigmoid(3.9) = 0.98). On the miniature it made no
    # measurable difference to held-out scores and lowered the reward spread in all-wrong groups by a third
    # (benchmarks/hybrid_settings.py, docs/benchmarks.md). False: raw scores.
    calibrate: bool = True
    # Throughput (on by default; off only to measure what each one brings: benchmarks/reward_cost.py):
    # Prepare the next batch on a thread while the model scores this one. None: on a GPU only (on a
    # CPU the two compete for the same cores: measured 3% slower on the 2-core CI machine).
    prefetch: bool | None = None
    sort_by_length: bool = True  # batch rows of similar length together (scores return in input order)
    encode_images_once: bool = True  # an image shared by rows of a batch goes through the vision tower once

    def __post_init__(self) -> None:
        if self.dtype not in REWARD_MODEL_DTYPES:
            raise ValueError(f"reward.model.dtype must be one of {REWARD_MODEL_DTYPES}, got {self.dtype!r}")


REWARD_MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
JUDGE_BACKENDS = ("hf", "vllm")
JUDGE_MODES = ("pairwise", "pointwise")


@dataclass
class JudgeOptions:
    """The generative judge (reward/judge.py): a chat vision-language model that writes a verdict, run on a
    rollout engine."""

    # The judge: a `brl train-rm paradigm=generative` checkpoint, or a published generative reward model (a
    # Qwen2.5-VL / Qwen2-VL chat checkpoint; R1-Reward is yifanzhang114/R1-Reward), by hub id or local path.
    path: str | None = None
    backend: str = "hf"  # the rollout engine it runs on: hf (transformers generate) | vllm
    # The prompt, a text file with {question} {answer1} {answer2} (pairwise) or {question} {answer}
    # (pointwise). None: the checkpoint's own (a trained judge records its), else R1-Reward's published one.
    template: str | None = None
    pointwise_template: str | None = None
    # pairwise: each completion against the row's reference, in both orders (rows without one: pointwise);
    # pointwise: each completion alone.
    mode: str = "pairwise"
    both_orders: bool = True  # pairwise in both orders, the two probabilities averaged (order bias cancels)
    reference_column: str = "reference"  # the reference response (rows without it: `answer_column`)
    answer_column: str = "answer"
    # Generated tokens per verdict, at most: a judge that has not closed its <answer> by then is cut off,
    # its verdict unparsed (a failure). R1-Reward thinks at length: give it hundreds.
    max_tokens: int = 32
    top_logprobs: int = 5  # log-probabilities read at the verdict token (its distribution over 1 and 2)
    batch_size: int = 32  # judge prompts per generate call
    max_pixels: int | None = 200_704  # per image
    dtype: str = "auto"  # the judge's weights (auto: as saved)
    device: str | None = None  # hf backend: None = cuda if this process has a GPU, else cpu
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments (backend: vllm)

    def __post_init__(self) -> None:
        if self.backend not in JUDGE_BACKENDS:
            raise ValueError(f"judge backend must be one of {JUDGE_BACKENDS}, got {self.backend!r}")
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"judge mode must be one of {JUDGE_MODES}, got {self.mode!r}")
        if self.max_tokens < 1:
            raise ValueError(f"judge max_tokens must be >= 1, got {self.max_tokens}")

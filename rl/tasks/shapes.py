"""A seeded synthetic visual task: coloured shapes on a 2x2 grid, with short-answer questions.

Each image is 56x56 pixels, split into four 28x28 cells; with Qwen2.5-VL's 14-px patches and 2x2
merge, each cell is exactly one visual token, so a tiny model can learn the task on a CPU.

Questions ask for the colour, the shape, the count or the position of shapes. Every question has a
short canonical answer ("red", "circle", "3", "top left") and several other phrasings that mean the
same ("It is red.", "three", "top-left"). The phrasings are what lets an exact-match reward and a
learned reward disagree: the rule matcher only forgives what its normaliser knows, a reward model
learns what it was shown.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

from policies.chat import with_image_parts
from policies.loading import check_model_source
from policies.tiny import make_tiny_qwen2, make_tiny_qwen2_5_vl

log = logging.getLogger(__name__)

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
TASKS = ("color", "shape", "count", "position")
IMAGE_SIZE = 56
CELL = IMAGE_SIZE // 2

QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
    "position": "Where is the shape?",
}


@dataclass(frozen=True)
class Item:
    """One placed shape: which cell (0..3, row-major), its shape and colour name."""

    cell: int
    shape: str
    color: str


def draw(items: list[Item]) -> PILImage.Image:
    img = PILImage.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(img)
    for it in items:
        x0, y0 = (it.cell % 2) * CELL + 4, (it.cell // 2) * CELL + 4
        x1, y1 = x0 + CELL - 8, y0 + CELL - 8
        fill = COLORS[it.color]
        if it.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif it.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon(((x0 + x1) // 2, y0, x1, y1, x0, y1), fill=fill)
    return img


def _sample(rng: random.Random, task: str) -> tuple[list[Item], str]:
    """Sample a scene for `task` and return it with the canonical answer."""
    n = rng.randint(1, 4) if task == "count" else 1
    cells = rng.sample(range(4), n)
    items = [Item(c, rng.choice(SHAPES), rng.choice(list(COLORS))) for c in cells]
    answer = {
        "color": lambda: items[0].color,
        "shape": lambda: items[0].shape,
        "count": lambda: str(n),
        "position": lambda: POSITIONS[items[0].cell],
    }[task]()
    return items, answer


def paraphrases(answer: str, task: str) -> list[str]:
    """Other correct ways to say `answer` (never the canonical string itself)."""
    out = [f"{answer}.", answer.capitalize(), f"It is {answer}.", f"The answer is {answer}"]
    if task == "count":
        word = NUMBER_WORDS[int(answer)]
        out += [word, word.capitalize(), f"There are {word}.", f"{answer} shapes"]
    if task == "position":
        out += [answer.replace(" ", "-"), f"in the {answer}", f"{answer} corner"]
    if task == "shape":
        out += [f"a {answer}", f"It is a {answer}."]
    return [p for p in dict.fromkeys(out) if p != answer]


def wrong_answers(answer: str, task: str) -> list[str]:
    """Plausible wrong answers of the same kind (near misses: counts off by one, other colours)."""
    if task == "color":
        return [c for c in COLORS if c != answer]
    if task == "shape":
        return [s for s in SHAPES if s != answer]
    if task == "position":
        return [p for p in POSITIONS if p != answer]
    n = int(answer)
    return [str(k) for k in (n - 1, n + 1) if 0 <= k <= 4] + [NUMBER_WORDS[k] for k in (n - 1, n + 1) if 0 <= k <= 4]


def prompt_messages(question: str) -> list[dict]:
    """Conversational prompt with one image placeholder, in the structure TRL and the processor expect."""
    return with_image_parts([{"role": "user", "content": [{"type": "text", "text": question}]}], 1)


FEATURES = Features({
    "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
    "images": Sequence(Image()),
    "answer": Value("string"),
    "task": Value("string"),
})


def make_shapes_dataset(n: int, seed: int = 0, tasks: tuple[str, ...] | list[str] = TASKS) -> Dataset:
    """`n` rows `{prompt, images, answer, task}`, deterministic for a given seed. Tasks cycle evenly."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown shapes task(s) {sorted(unknown)}; choose from {list(TASKS)}")
    rng = random.Random(seed)
    rows: dict[str, list] = {"prompt": [], "images": [], "answer": [], "task": []}
    for i in range(n):
        task = tasks[i % len(tasks)]
        items, answer = _sample(rng, task)
        rows["prompt"].append(prompt_messages(QUESTIONS[task]))
        rows["images"].append([draw(items)])
        rows["answer"].append(answer)
        rows["task"].append(task)
    return Dataset.from_dict(rows, features=FEATURES)


def make_shapes_splits(train_size: int, eval_size: int, seed: int = 0,
                       tasks: tuple[str, ...] | list[str] = TASKS) -> tuple[Dataset, Dataset]:
    """Train and held-out splits from disjoint seeds (held-out scenes are drawn independently)."""
    return (make_shapes_dataset(train_size, seed, tasks),
            make_shapes_dataset(eval_size, seed + 1_000_003, tasks))


# Answers that name things the scenes never contain: detectable from the text alone.
HALLUCINATIONS = {
    "color": ["purple", "orange", "black", "pink"],
    "shape": ["hexagon", "star", "heart", "oval"],
    "count": ["5", "6", "7", "9"],
    "position": ["center", "middle", "outside the image", "far away"],
}

# Phrasings applied alike to right and wrong answers, so a reward model cannot tell them apart by
# wording and must look at the image to rank a pair.
TEMPLATES = ("{}", "{}.", "It is {}.", "The answer is {}", "{}!")


def _phrase(rng: random.Random, answer: str, task: str) -> str:
    if task == "count" and rng.random() < 0.3 and answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        answer = NUMBER_WORDS[int(answer)]
    return rng.choice(TEMPLATES).format(answer)


PREFERENCE_FEATURES = Features({
    "prompt": FEATURES["prompt"],
    "images": Sequence(Image()),
    "chosen": Value("string"),
    "rejected": Value("string"),
    "task": Value("string"),
    "kind": Value("string"),
})


# Kinds of rejected answer in the synthetic pairs, with their shares. Near misses need the image;
# the rest are failure modes a policy drifts into under RL (they are here so a reward model trained
# on these pairs is not trivially hackable by them).
REJECTION_KINDS = {"near_miss": 0.4, "hallucination": 0.2, "off_task": 0.2, "degenerate": 0.2}


def _rejected(rng: random.Random, answer: str, task: str, kind: str) -> str:
    if kind == "hallucination":  # names something no scene contains
        return _phrase(rng, rng.choice(HALLUCINATIONS[task]), task)
    if kind == "off_task":  # a well-formed answer to a different question
        other = rng.choice([t for t in TASKS if t != task])
        _, other_answer = _sample(rng, other)
        return _phrase(rng, other_answer, other)
    if kind == "degenerate":  # repetition / run-on text
        word = rng.choice([answer.split()[-1], "left", "the", "shape"])
        head = [answer] if rng.random() < 0.5 else []
        return " ".join(head + [word] * rng.randint(3, 7))
    near = [w for w in wrong_answers(answer, task) if w.isdigit() or task != "count"]
    return _phrase(rng, rng.choice(near), task)


def make_preference_pairs(n: int, seed: int = 0, tasks: tuple[str, ...] | list[str] = TASKS,
                          kinds: dict[str, float] | None = None) -> Dataset:
    """`n` preference rows `{prompt, images, chosen, rejected, task, kind}` on shapes scenes.

    chosen is right (canonical or paraphrased). rejected is drawn from `kinds` (default
    REJECTION_KINDS): a near miss (another colour, a count off by one: rankable only by looking at the
    image), a hallucination (something no scene contains), an off-task answer or degenerate text.
    Right and wrong answers share the same phrasings, so wording alone gives nothing away.
    """
    kinds = kinds or REJECTION_KINDS
    base = make_shapes_dataset(n, seed, tasks)
    rng = random.Random(seed + 17)
    chosen, rejected, drawn = [], [], []
    for answer, task in zip(base["answer"], base["task"], strict=True):
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        chosen.append(_phrase(rng, answer, task))
        rejected.append(_rejected(rng, answer, task, kind))
        drawn.append(kind)
    rows = base.remove_columns(["answer"]).add_column("chosen", chosen).add_column("rejected", rejected)
    return rows.add_column("kind", drawn).cast(PREFERENCE_FEATURES)


def vocabulary_corpus() -> list[str]:
    """Every string the task can produce, plus filler English, for training the tiny tokenizer."""
    lines = list(QUESTIONS.values())
    for task in TASKS:
        answers = {"color": list(COLORS), "shape": list(SHAPES), "count": ["1", "2", "3", "4"],
                   "position": list(POSITIONS)}[task]
        for a in answers:
            lines += [a, *paraphrases(a, task), *wrong_answers(a, task)]
        lines += HALLUCINATIONS[task]
    lines += [t.format(a) for t in TEMPLATES for a in ("red", "circle", "3", "top left")]
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "Answer with a single word or number. Yes, no, maybe: the image shows a picture.",
        "0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
        "<answer> </answer> \\boxed{}",
    ]
    return lines * 4


def make_tiny_policy(out_dir: str | Path, seed: int = 0, text: dict[str, Any] | None = None,
                     text_only: bool = False) -> Path:
    """The offline tiny Qwen2.5-VL (or, `text_only`, Qwen2) with a tokenizer that knows this task's
    words. `text` overrides fields of the language model's config (see policies.tiny)."""
    if text_only:
        return make_tiny_qwen2(out_dir, vocabulary_corpus(), seed=seed)
    return make_tiny_qwen2_5_vl(out_dir, vocabulary_corpus(), seed=seed, text=text)


def make_real_shape_model(name: str, out: str | Path, reward_model: bool = False) -> Path:
    """A random-weight model with `name`'s real dimensions (policies/known_models.py) saved in `out`: the
    policy, or (`reward_model`) a BaseReward model on its backbone; built directly on the GPU (a CPU init
    of 7.76B weights takes minutes), with this task's offline tokenizer and a processor for images up to
    448 x 448. Memory and speed are the real model's; answers are noise (the GPU lane, GPU benchmarks)."""
    import torch

    from policies.known_models import known_config
    from policies.tiny import build_processor, build_tokenizer

    processor = build_processor(build_tokenizer(vocabulary_corpus()), pixels=(56 * 56, 448 * 448))
    tok = processor.tokenizer
    config = known_config(name)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(config, key, tok.convert_tokens_to_ids(token))
    for sub in (config, config.text_config):
        sub.eos_token_id, sub.pad_token_id, sub.bos_token_id = tok.eos_token_id, tok.pad_token_id, tok.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        if reward_model:
            from transformers import AutoModel

            from reward.model import BaseRewardModel

            model = BaseRewardModel(AutoModel.from_config(config, dtype=torch.bfloat16))
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
    if reward_model:
        model.save_pretrained(out, processor)
    else:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def resolve_policy_path(path: str, output_dir: str | Path, seed: int = 0, field: str = "policy.path") -> str:
    """`policy.path: tiny` builds the offline tiny policy under `output_dir/tiny-policy` (once); a local
    directory is made absolute (actors and learner workers open it from directories of their own); a
    hub id passes through. A path that cannot load here is a FileNotFoundError naming `field`."""
    if path != "tiny":
        check_model_source(path, field)
        return str(Path(path).resolve()) if Path(path).is_dir() else path
    target = Path(output_dir) / "tiny-policy"
    if not (target / "config.json").is_file():
        log.info("building the offline tiny Qwen2.5-VL policy in %s", target)
        make_tiny_policy(target, seed=seed)
    return str(target.resolve())

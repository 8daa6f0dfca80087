"""A seeded synthetic visual task: coloured shapes on a 2x2 grid, with closed and open-ended questions.

Each image is 56x56 pixels, split into four 28x28 cells; with Qwen2.5-VL's 14-px patches and 2x2
merge, each cell is exactly one visual token, so a tiny model can learn the task on a CPU.

Closed questions ask for the colour, the shape, the count or the position of shapes. Each has a short
canonical answer ("red", "circle", "3", "top left") and several other phrasings that mean the same ("It
is red.", "three", "top-left"): an exact-match rule forgives only what its normaliser knows, a reward
model learns what it was shown. The open-ended question ("Describe the picture.") is the miniature of
LLaVA-Wild and WildVision: its good answers are free descriptions (any order, phrasing, articles), so a
row has no matchable answer (`answer` is None: the rule cannot judge it) but a `reference` description
(what SFT teaches and a generative judge compares against) and its `scene`; held out, a description is
scored against the scene itself (`describe_score`: each object's colour, shape and position stated
correctly, invented objects penalised: precision and recall), standing in for LLaVA-Wild's GPT-4 judge.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
from dataclasses import dataclass

from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

from policies.chat import with_image_parts
from reward.judge import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE

log = logging.getLogger(__name__)

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
CLOSED_TASKS = ("color", "shape", "count", "position")
TASKS = (*CLOSED_TASKS, "description")
IMAGE_SIZE = 56
CELL = IMAGE_SIZE // 2

QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
    "position": "Where is the shape?",
    "description": "Describe the picture.",
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
    """Sample a scene for `task` and return it with the canonical answer (for a description: the
    canonical description)."""
    n = rng.randint(1, 4) if task == "count" else rng.randint(1, 2) if task == "description" else 1
    cells = sorted(rng.sample(range(4), n))
    items = [Item(c, rng.choice(SHAPES), rng.choice(list(COLORS))) for c in cells]
    answer = {
        "color": lambda: items[0].color,
        "shape": lambda: items[0].shape,
        "count": lambda: str(n),
        "position": lambda: POSITIONS[items[0].cell],
        "description": lambda: describe(items),
    }[task]()
    return items, answer


# -- descriptions -----------------------------------------------------------------------------


def describe(items: list[Item]) -> str:
    """The canonical description: every object, in cell order ("a red circle in the top left and a blue
    square in the bottom right")."""
    parts = [f"a {it.color} {it.shape} in the {POSITIONS[it.cell]}" for it in items]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_freely(rng: random.Random, items: list[Item]) -> str:
    """A correct description in another form: any order, other phrasings of the positions and articles."""
    style = rng.random()

    def where(item: Item) -> str:
        position = POSITIONS[item.cell]
        return f"{position} corner" if style < 0.3 else position.replace(" ", "-") if style < 0.5 else position

    parts = [
        f"{rng.choice(('a', 'one'))} {it.color} {it.shape} {rng.choice(('in the', 'at the'))} {where(it)}"
        for it in rng.sample(items, len(items))
    ]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return rng.choice(("{}", "There is {}.", "I see {}.", "The picture shows {}.")).format(body)


_MENTION = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})s?\b")
_POSITION = re.compile(r"\b(top|bottom)[\s-]+(left|right)\b")


def mentions(text: str) -> list[tuple[str, str, str | None]]:
    """(colour, shape, position or None) of each object a description names, in order: a colour and a
    shape word, and the first position phrase after them (before the next object)."""
    text = text.casefold()
    found = list(_MENTION.finditer(text))
    out = []
    for k, m in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(text)
        where = _POSITION.search(text, m.end(), end)
        out.append((m.group(1), m.group(2), f"{where.group(1)} {where.group(2)}" if where else None))
    return out


def describe_score(text: str, items: list[Item]) -> float:
    """How well `text` describes the scene `items`: F1 of precision (named objects that are in the scene
    with that colour, shape and position) and recall (scene objects named with all three right).
    Invented objects lower the precision; missing ones the recall; no description scores 0."""
    named = mentions(text)
    truth = {(it.color, it.shape, POSITIONS[it.cell]) for it in items}
    correct = [m for m in named if m in truth]
    if not correct:
        return 0.0
    precision, recall = len(correct) / len(named), len(set(correct)) / len(truth)
    return 2 * precision * recall / (precision + recall)


def scene_json(items: list[Item]) -> str:
    return json.dumps([[it.cell, it.shape, it.color] for it in items])


def scene_items(scene: str) -> list[Item]:
    return [Item(cell, shape, color) for cell, shape, color in json.loads(scene)]


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


FEATURES = Features(
    {
        "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
        "images": Sequence(Image()),
        "answer": Value("string"),  # the matchable ground truth; None for descriptions
        "reference": Value("string"),  # a good response: the canonical answer or description
        "task": Value("string"),
        "scene": Value("string"),  # the objects drawn (JSON): what a description is scored against
    }
)

Tasks = tuple[str, ...] | list[str] | dict[str, float]


def task_sequence(n: int, tasks: Tasks, rng: random.Random) -> list[str]:
    """The task of each of `n` rows: a list cycles evenly; a dict {task: weight} is drawn by weight."""
    names = list(tasks)
    unknown = set(names) - set(TASKS)
    if unknown or not names:
        raise ValueError(f"unknown shapes task(s) {sorted(unknown) or '(none)'}; choose from {list(TASKS)}")
    if isinstance(tasks, dict):
        weights = [float(tasks[t]) for t in names]
        if any(w < 0 for w in weights) or not sum(weights):
            raise ValueError(f"shapes task weights must be >= 0 and not all 0, got {dict(tasks)}")
        if len(set(weights)) > 1:
            return rng.choices(names, weights=weights, k=n)
    return [names[i % len(names)] for i in range(n)]


def make_shapes_dataset(n: int, seed: int = 0, tasks: Tasks = TASKS) -> Dataset:
    """`n` rows `{prompt, images, answer, reference, task, scene}`, deterministic for a given seed. A list
    of tasks cycles evenly; a dict weights them."""
    rng = random.Random(seed)
    rows: dict[str, list] = {key: [] for key in FEATURES}
    for task in task_sequence(n, tasks, random.Random(seed + 7)):
        items, answer = _sample(rng, task)
        rows["prompt"].append(prompt_messages(QUESTIONS[task]))
        rows["images"].append([draw(items)])
        rows["answer"].append(None if task == "description" else answer)
        rows["reference"].append(answer)
        rows["task"].append(task)
        rows["scene"].append(scene_json(items))
    return Dataset.from_dict(rows, features=FEATURES)


def make_shapes_splits(train_size: int, eval_size: int, seed: int = 0, tasks: Tasks = TASKS) -> tuple[Dataset, Dataset]:
    """Train and held-out splits from disjoint seeds (held-out scenes are drawn independently)."""
    return (make_shapes_dataset(train_size, seed, tasks), make_shapes_dataset(eval_size, seed + 1_000_003, tasks))


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


PREFERENCE_FEATURES = Features(
    {
        "prompt": FEATURES["prompt"],
        "images": Sequence(Image()),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "task": Value("string"),
        "kind": Value("string"),
    }
)


# Kinds of rejected answer in the synthetic pairs, with their shares. Near misses need the image;
# the rest are failure modes a policy drifts into under RL (they are here so a reward model trained
# on these pairs is not trivially hackable by them).
REJECTION_KINDS = {"near_miss": 0.4, "hallucination": 0.2, "off_task": 0.2, "degenerate": 0.2}


def _rejected(rng: random.Random, answer: str, task: str, kind: str) -> str:
    if kind == "hallucination":  # names something no scene contains
        return _phrase(rng, rng.choice(HALLUCINATIONS[task]), task)
    if kind == "off_task":  # a well-formed answer to a different question
        other = rng.choice([t for t in CLOSED_TASKS if t != task])
        _, other_answer = _sample(rng, other)
        return _phrase(rng, other_answer, other)
    if kind == "degenerate":  # repetition / run-on text
        word = rng.choice([answer.split()[-1], "left", "the", "shape"])
        head = [answer] if rng.random() < 0.5 else []
        return " ".join(head + [word] * rng.randint(3, 7))
    near = [w for w in wrong_answers(answer, task) if w.isdigit() or task != "count"]
    return _phrase(rng, rng.choice(near), task)


# A description's rejected answers, by the kind drawn: the kinds keep their meaning (a near miss needs the
# image, ...) under names of their own, so accuracy on descriptions is reported apart.
DESCRIPTION_KINDS = {
    "near_miss": "wrong_attribute",
    "hallucination": "invented_object",
    "off_task": "off_task",
    "degenerate": "degenerate",
}


def _wrong_description(rng: random.Random, items: list[Item], kind: str, wording: random.Random | None = None) -> str:
    """A description that fails the scene the way `kind` says; `wording`, when given, words it (order,
    articles, phrasings) instead of `rng`."""
    wording = wording or rng
    free = [c for c in range(4) if c not in {it.cell for it in items}]
    if kind == "wrong_attribute":  # one object's colour, shape or position said wrong, the rest right
        k = rng.randrange(len(items))
        it = items[k]
        attribute = rng.choice(["color", "shape", "cell"] if free else ["color", "shape"])
        other = {
            "color": lambda: Item(it.cell, it.shape, rng.choice([c for c in COLORS if c != it.color])),
            "shape": lambda: Item(it.cell, rng.choice([s for s in SHAPES if s != it.shape]), it.color),
            "cell": lambda: Item(rng.choice(free), it.shape, it.color),
        }[attribute]()
        return describe_freely(wording, [*items[:k], other, *items[k + 1 :]])
    if kind == "invented_object":  # everything right, plus an object the scene does not have
        extra = (
            Item(rng.choice(free), rng.choice(SHAPES), rng.choice(list(COLORS)))
            if free
            else Item(items[0].cell, rng.choice([s for s in SHAPES if s != items[0].shape]), items[0].color)
        )
        return describe_freely(wording, [*items, extra])
    if kind == "off_task":  # a closed answer where a description was asked for
        return _phrase(rng, rng.choice([items[0].color, items[0].shape, POSITIONS[items[0].cell]]), "color")
    words = describe(items).split()  # degenerate: a repeated fragment
    return " ".join(words[: rng.randint(1, 3)] + [rng.choice(words)] * rng.randint(3, 7))


def make_preference_pairs(
    n: int, seed: int = 0, tasks: Tasks = TASKS, kinds: dict[str, float] | None = None, same_wording: bool = False
) -> Dataset:
    """`n` preference rows `{prompt, images, chosen, rejected, task, kind}` on shapes scenes.

    chosen is right (canonical or paraphrased; for a description, a free correct one). rejected is drawn
    from `kinds` (default REJECTION_KINDS): a near miss (another colour, a count off by one; for a
    description one object's attribute wrong: rankable only by looking at the image), a hallucination
    (something no scene contains; an invented object), an off-task answer or degenerate text. Right and
    wrong answers share the same phrasings, so wording alone gives nothing away.

    `same_wording`: a description's wrong one is worded from the same random draws as its right one: with
    one wrong attribute, exactly (the same order, articles and phrasings), so that attribute is all that
    differs: minimal pairs, hard negatives for training (with an invented object only the style is shared:
    one more object changes the draws). Off, the two are worded independently, as answers come in practice.
    """
    kinds = kinds or REJECTION_KINDS
    base = make_shapes_dataset(n, seed, tasks)
    rng = random.Random(seed + 17)
    chosen, rejected, drawn = [], [], []
    for reference, task, scene in zip(base["reference"], base["task"], base["scene"], strict=True):
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if task == "description":
            items, kind = scene_items(scene), DESCRIPTION_KINDS[kind]
            wording = copy.copy(rng) if same_wording else None  # the chosen description's words, drawn again
            chosen.append(describe_freely(rng, items))
            rejected.append(_wrong_description(rng, items, kind, wording))
        else:
            chosen.append(_phrase(rng, reference, task))
            rejected.append(_rejected(rng, reference, task, kind))
        drawn.append(kind)
    rows = base.remove_columns(["answer", "reference", "scene"]).add_column("chosen", chosen)
    return rows.add_column("rejected", rejected).add_column("kind", drawn).cast(PREFERENCE_FEATURES)


def vocabulary_corpus() -> list[str]:
    """Every string the task can produce, plus filler English, for training the tiny tokenizer."""
    lines = list(QUESTIONS.values())
    for task in CLOSED_TASKS:
        answers = {
            "color": list(COLORS),
            "shape": list(SHAPES),
            "count": ["1", "2", "3", "4"],
            "position": list(POSITIONS),
        }[task]
        for a in answers:
            lines += [a, *paraphrases(a, task), *wrong_answers(a, task)]
        lines += HALLUCINATIONS[task]
    lines += [t.format(a) for t in TEMPLATES for a in ("red", "circle", "3", "top left")]
    rng = random.Random(0)  # descriptions: every colour, shape and position in the phrasings they come in
    lines += [describe_freely(rng, [Item(c, s, k)]) for c in range(4) for s in SHAPES for k in COLORS]
    lines += [t.read_text() for t in (PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE)]  # a tiny judge's prompts
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "Answer with a single word or number. Yes, no, maybe: the image shows a picture.",
        "0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
        "<answer> </answer> \\boxed{}",
    ]
    return lines * 4

import random
import re

import pytest
from PIL import Image

from rl.tasks.shapes import (
    COLORS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    TASKS,
    Item,
    describe,
    describe_freely,
    describe_score,
    make_preference_pairs,
    make_shapes_dataset,
    make_shapes_splits,
    mentions,
    paraphrases,
    scene_items,
    wrong_answers,
)


def test_rows_have_the_rl_format():
    ds = make_shapes_dataset(8, seed=3)
    assert set(ds.column_names) == {"prompt", "images", "answer", "reference", "task", "scene"}
    row = ds[0]
    assert row["prompt"][0]["role"] == "user"
    parts = row["prompt"][0]["content"]
    assert [p["type"] for p in parts] == ["image", "text"]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert row["images"][0].size == (56, 56)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = make_shapes_dataset(12, seed=1), make_shapes_dataset(12, seed=1), make_shapes_dataset(12, seed=2)
    assert a["answer"] == b["answer"]
    assert [im[0].tobytes() for im in a["images"]] == [im[0].tobytes() for im in b["images"]]
    assert [im[0].tobytes() for im in a["images"]] != [im[0].tobytes() for im in c["images"]]


def test_answers_are_valid_for_their_task_and_descriptions_have_none():
    ds = make_shapes_dataset(200, seed=0)
    valid = {"color": set(COLORS), "shape": set(SHAPES), "count": {"1", "2", "3", "4"}, "position": set(POSITIONS)}
    assert set(ds["task"]) == set(TASKS)
    for task, answer, reference, scene in zip(ds["task"], ds["answer"], ds["reference"], ds["scene"]):
        if task == "description":  # the rule has nothing to match; the reference describes the scene exactly
            assert answer is None and reference == describe(scene_items(scene))
            assert describe_score(reference, scene_items(scene)) == 1.0
        else:
            assert answer in valid[task] and reference == answer


def test_the_task_mix_takes_weights():
    ds = make_shapes_dataset(400, seed=0, tasks={"color": 3.0, "description": 1.0})
    assert set(ds["task"]) == {"color", "description"}
    assert 0.65 < ds["task"].count("color") / 400 < 0.85
    two = make_shapes_dataset(5, seed=0, tasks={"color": 1.0, "count": 1.0})
    assert two["task"] == ["color", "count"] * 2 + ["color"]
    with pytest.raises(ValueError, match="weights"):
        make_shapes_dataset(2, tasks={"color": 0.0})


def test_the_scene_score_reads_free_descriptions_and_penalises_wrong_and_invented_objects():
    scene = [Item(0, "circle", "red"), Item(3, "square", "blue")]
    assert describe(scene) == "a red circle in the top left and a blue square in the bottom right"
    rng = random.Random(0)
    for _ in range(20):  # any order, articles and phrasings of the positions
        free = describe_freely(rng, scene)
        assert describe_score(free, scene) == 1.0, free
    assert mentions("There is one Blue square at the bottom-right corner.") == [("blue", "square", "bottom right")]
    half = describe_score("a red circle in the top left", scene)  # one of two objects: precision 1, recall 1/2
    assert half == pytest.approx(2 / 3)
    wrong = describe_score("a red circle in the top left and a green square in the bottom right", scene)
    assert wrong == pytest.approx(0.5)  # one object right of two named, one of two described
    invented = describe_score(describe(scene) + " and a yellow triangle in the top right", scene)
    assert invented == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert describe_score("red", scene) == 0.0 and describe_score("", scene) == 0.0


def test_description_pairs_reject_one_wrong_attribute_or_an_invented_object():
    pairs = make_preference_pairs(300, seed=2, tasks=["description"])
    kinds = set(pairs["kind"])
    assert (
        {"wrong_attribute", "invented_object"}
        <= kinds
        <= {"wrong_attribute", "invented_object", "off_task", "degenerate"}
    )
    for row in pairs:
        if row["kind"] == "wrong_attribute":  # as long as a right one, but one object's attribute is wrong
            assert len(mentions(row["rejected"])) == len(mentions(row["chosen"]))
            assert sorted(mentions(row["rejected"])) != sorted(mentions(row["chosen"]))
        if row["kind"] == "invented_object":
            assert len(mentions(row["rejected"])) == len(mentions(row["chosen"])) + 1


def test_count_answer_matches_the_drawn_shapes():
    # Count distinct non-white blobs per quadrant: a quadrant with a shape has coloured pixels.
    ds = make_shapes_dataset(40, seed=5, tasks=["count"])
    for row in ds:
        img = row["images"][0]
        filled = 0
        for qx in (0, 28):
            for qy in (0, 28):
                quadrant = img.crop((qx, qy, qx + 28, qy + 28))
                filled += any(px != (255, 255, 255) for px in quadrant.getdata())
        assert str(filled) == row["answer"]


def test_held_out_split_is_drawn_independently():
    train, held_out = make_shapes_splits(50, 50, seed=0)
    assert len(train) == len(held_out) == 50
    train_scenes = [im[0].tobytes() for im in train["images"]]
    held_scenes = [im[0].tobytes() for im in held_out["images"]]
    assert train_scenes != held_scenes  # not the same sequence of scenes


def test_paraphrases_and_wrong_answers_let_rewards_disagree():
    for task, answer in [("color", "red"), ("count", "3"), ("position", "top left"), ("shape", "circle")]:
        para = paraphrases(answer, task)
        assert answer not in para and len(para) >= 4
        wrong = wrong_answers(answer, task)
        assert wrong and answer not in wrong
    assert "three" in paraphrases("3", "count")
    assert "2" in wrong_answers("3", "count") and "4" in wrong_answers("3", "count")


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown shapes task"):
        make_shapes_dataset(2, tasks=["colour"])


def _attributes_blanked(text: str) -> str:
    """`text` with every colour, shape and position phrase replaced by one placeholder."""
    words = "|".join([*COLORS, *SHAPES])
    return re.sub(rf"\b({words})\b|\b(top|bottom)[\s-]+(left|right)\b", "_", text)


def test_same_wording_pairs_differ_only_in_the_wrong_attribute():
    minimal = make_preference_pairs(200, seed=4, tasks=["description"], kinds={"near_miss": 1.0}, same_wording=True)
    free = make_preference_pairs(200, seed=4, tasks=["description"], kinds={"near_miss": 1.0})
    assert set(minimal["kind"]) == {"wrong_attribute"}
    for row in minimal:  # the same words around the attributes; the attributes differ in one object
        assert _attributes_blanked(row["rejected"]) == _attributes_blanked(row["chosen"]), row
        assert sorted(mentions(row["rejected"])) != sorted(mentions(row["chosen"]))
    assert minimal["task"] == free["task"] and minimal["chosen"][0] == free["chosen"][0]  # the same scenes
    reworded = sum(_attributes_blanked(r["rejected"]) != _attributes_blanked(r["chosen"]) for r in free)
    assert reworded > 100  # by default the two are worded independently


def test_preference_source_options_shape_the_training_pairs_and_leave_the_held_out_ones_alone():
    from rl.config import PreferenceDataConfig, PreferenceSourceConfig
    from rl.data import load_preference_mixture

    source = PreferenceSourceConfig(
        source="shapes", size=60, tasks={"description": 3.0, "color": 1.0}, same_wording=True
    )
    train, held_out = load_preference_mixture(PreferenceDataConfig(sources=[source], eval_size=200))
    questions = [row["prompt"][0]["content"][-1]["text"] for row in train]  # the mixture keeps the common columns
    assert set(questions) == {QUESTIONS["description"], QUESTIONS["color"]}
    assert questions.count(QUESTIONS["description"]) > 30
    assert set(held_out["task"]) == set(TASKS)
    wrong = [r for r in held_out if r["kind"] == "wrong_attribute"]
    assert any(_attributes_blanked(r["rejected"]) != _attributes_blanked(r["chosen"]) for r in wrong)
    with pytest.raises(ValueError, match="unknown shapes task"):
        load_preference_mixture(
            PreferenceDataConfig(sources=[PreferenceSourceConfig(source="shapes", tasks={"sky": 1.0})])
        )

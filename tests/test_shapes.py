from PIL import Image

from rl.tasks.shapes import (COLORS, POSITIONS, SHAPES, TASKS, make_shapes_dataset, make_shapes_splits,
                             paraphrases, wrong_answers)


def test_rows_have_the_rl_format():
    ds = make_shapes_dataset(8, seed=3)
    assert set(ds.column_names) == {"prompt", "images", "answer", "task"}
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


def test_answers_are_valid_for_their_task():
    ds = make_shapes_dataset(200, seed=0)
    valid = {"color": set(COLORS), "shape": set(SHAPES), "count": {"1", "2", "3", "4"}, "position": set(POSITIONS)}
    assert set(ds["task"]) == set(TASKS)
    for task, answer in zip(ds["task"], ds["answer"]):
        assert answer in valid[task]


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
    import pytest

    with pytest.raises(ValueError, match="unknown shapes task"):
        make_shapes_dataset(2, tasks=["colour"])

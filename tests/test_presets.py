"""Every data preset on a small fixture with its dataset's published schema (column names, types, image
encoding), built offline: what the loader makes of it, row by row. No hub here, so each fixture is
written as the dataset ships (a hub dataset's parquet with embedded images, JSONL files, a folder
with a meta.json) and the preset pointed at it."""

from __future__ import annotations

import io
import json

import pytest
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from recipes.cli import main as cli
from rl.config import SourceConfig, ValidationConfig
from rl.data import DataError, Source, load_source, validate_source


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _hub_parquet(path, rows: list[dict], features: Features) -> str:
    """A hub dataset's data file: parquet as `datasets` writes it (images embedded as {bytes, path})."""
    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return str(path)


def _jsonl(path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _load(source: str, preset: str, kind: str, **extra):
    return load_source(Source.of(SourceConfig(source=source, preset=preset, **extra), kind), kind, ValidationConfig())


def _images(row) -> list[str]:
    """The colour of each image of a loaded row (decoded only now)."""
    names = {(255, 0, 0): "red", (0, 0, 255): "blue", (0, 128, 0): "green"}
    return [names[im.getpixel((0, 0))] for im in row["images"]]


def _parts(row) -> list[str]:
    return [p["type"] for m in row["prompt"] for p in m["content"]]


def test_rlaif_v(tmp_path):
    features = Features(
        {
            "ds_name": Value("string"),
            "image": Image(),
            "question": Value("string"),
            "chosen": Value("string"),
            "rejected": Value("string"),
            "origin_dataset": Value("string"),
            "origin_split": Value("string"),
            "idx": Value("string"),
            "image_path": Value("string"),
        }
    )
    rows = [
        {
            "ds_name": "RLAIF-V",
            "image": {"bytes": _png(c), "path": None},
            "question": f"What color is it? {i}",
            "chosen": c,
            "rejected": "purple",
            "origin_dataset": "VQAv2",
            "origin_split": "train",
            "idx": str(i),
            "image_path": f"{i}.png",
        }
        for i, c in enumerate(("red", "blue"))
    ]
    ds = _load(_hub_parquet(tmp_path / "train.parquet", rows, features), "rlaif-v", "preference")
    assert len(ds) == 2 and [ds[i]["chosen"] for i in range(2)] == ["red", "blue"]
    assert _images(ds[1]) == ["blue"] and _parts(ds[1]) == ["image", "text"]
    assert ds[0]["prompt"][0]["content"][1]["text"] == "What color is it? 0"


def test_mmpr_v1_2_reads_its_annotation_files_with_each_sources_image_root(tmp_path):
    root = tmp_path / "MMPR-v1.2"
    for source, color in (("geoqa", "red"), ("chartqa", "blue")):
        (root / "images" / source).mkdir(parents=True)
        (root / "images" / source / "1.png").write_bytes(_png(color))
    (root / "annotations").mkdir()
    _jsonl(
        root / "annotations" / "geoqa.jsonl",
        [{"image": "1.png", "question": "<image>\nWhat is shown?", "chosen": "A red square.", "rejected": "A circle."}],
    )
    _jsonl(
        root / "annotations" / "chartqa.jsonl",
        [{"image": "1.png", "question": "Which color?<image>", "chosen": "Blue.", "rejected": "Red."}],
    )
    meta = {
        name: {
            "root": f"images/{name}",
            "annotation": f"annotations/{name}.jsonl",
            "data_augment": False,
            "repeat_time": 1,
            "length": 1,
        }
        for name in ("geoqa", "chartqa")
    }
    (root / "meta.json").write_text(json.dumps(meta))
    ds = _load(str(root), "mmpr-v1.2", "preference")
    assert [_images(ds[i]) for i in range(2)] == [["red"], ["blue"]]  # each relative to its own root
    assert _parts(ds[0]) == ["image", "text"] and ds[0]["prompt"][0]["content"][1]["text"] == "What is shown?"
    assert _parts(ds[1]) == ["text", "image"]  # the <image> marker's place is kept
    with pytest.raises(DataError, match="published as files to download: set source"):
        Source.of(SourceConfig(preset="mmpr-v1.2"), "preference")


def test_omnialign_v_dpo_with_its_image_root(tmp_path):
    (tmp_path / "images" / "chart").mkdir(parents=True)
    (tmp_path / "images" / "chart" / "7.png").write_bytes(_png("green"))
    path = _jsonl(
        tmp_path / "chart.jsonl",
        [
            {
                "id": "chart_7",
                "image": "chart/7.png",
                "prompt": "<image>\nSummarize.",
                "chosen": "A long, careful summary.",
                "rejected": "A chart.",
            }
        ],
    )
    ds = _load(path, "omnialign-v-dpo", "preference", image_root=str(tmp_path / "images"))
    assert _images(ds[0]) == ["green"] and ds[0]["chosen"] == "A long, careful summary." and ds[0]["id"] == "chart_7"
    report = validate_source(Source.of(SourceConfig(source=path, preset="omnialign-v-dpo"), "preference"), "preference")
    assert report.bad == 1 and "image file not found: chart/7.png" in report.errors[0].reason


def test_r1_reward_turns_both_responses_and_the_index_into_a_pair(tmp_path):
    def message(question, one, two):
        text = (
            f"You are a highly skilled and impartial evaluator... #### [Question]: {question}\n"
            f"#### [Response 1]: {one}\n#### [Response 2]: {two}\n#### [Your Evaluation]: ..."
        )
        return json.dumps(
            [{"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": text}]}]
        )

    features = Features({"image": Image(), "message": Value("string"), "answer": Sequence(Value("string"))})
    rows = [
        {
            "image": {"bytes": _png("red"), "path": None},
            "message": message("Color?", "Red.", "Blue."),
            "answer": ["<answer>1</answer>"],
        },
        {
            "image": {"bytes": _png("blue"), "path": None},
            "message": message("Color?", "Red.", "Blue."),
            "answer": ["<answer>2</answer>"],
        },
        {
            "image": {"bytes": _png("blue"), "path": None},
            "message": message("Color?", "Red.", "Blue."),
            "answer": ["<answer>3</answer>"],
        },
    ]
    path = _hub_parquet(tmp_path / "r1.parquet", rows, features)
    ds = _load(path, "r1-reward", "preference")
    assert [(ds[i]["chosen"], ds[i]["rejected"]) for i in range(2)] == [("Red.", "Blue."), ("Blue.", "Red.")]
    assert ds[0]["prompt"][0]["content"][1]["text"] == "Color?" and _images(ds[1]) == ["blue"]
    report = validate_source(Source.of(SourceConfig(source=path, preset="r1-reward"), "preference"), "preference")
    assert report.bad == 1 and "does not name response 1 or 2" in report.errors[0].reason


@pytest.mark.parametrize("preset", ["tulu3-preference", "olmo2-preference", "ultrafeedback-binarized"])
def test_message_list_responses_take_the_assistant_turn_and_the_shared_prompt(tmp_path, preset):
    def chat(answer, question="What is 2+2?"):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    base = {
        "tulu3-preference": {"id": "a", "source": "s", "prompt": "What is 2+2?"},
        "olmo2-preference": {"id": "a", "source": "s", "chosen_model": "m1", "rejected_model": "m2"},
        "ultrafeedback-binarized": {
            "prompt": "What is 2+2?",
            "prompt_id": "p",
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        },
    }[preset]
    rows = [
        {**base, "chosen": chat("4"), "rejected": chat("5")},
        {**base, "chosen": chat("4"), "rejected": chat("5", question="What is 3+3?")},  # prompts disagree
        {**base, "chosen": chat("4")[:1], "rejected": chat("5")},
    ]  # no assistant turn
    path = _jsonl(tmp_path / "prefs.jsonl", rows)
    ds = _load(path, preset, "preference")
    assert len(ds) == 1 and (ds[0]["chosen"], ds[0]["rejected"]) == ("4", "5") and ds[0]["images"] == []
    assert [(m["role"], m["content"][0]["text"]) for m in ds[0]["prompt"]] == [("user", "What is 2+2?")]
    report = validate_source(Source.of(SourceConfig(source=path, preset=preset), "preference"), "preference")
    reasons = [e.reason for e in report.errors]
    if preset == "olmo2-preference":  # no prompt column: the disagreement is found
        assert "chosen and rejected disagree on the prompt turns" in reasons[0]
    assert any("last turn is not the assistant's" in r for r in reasons)


def test_shp_labels_say_which_comment_is_chosen(tmp_path):
    def row(label):
        return {
            "post_id": "p",
            "domain": "askscience_train",
            "upvote_ratio": 0.9,
            "history": "Why is the sky blue?",
            "c_root_id_A": "a",
            "c_root_id_B": "b",
            "created_at_utc_A": 1,
            "created_at_utc_B": 2,
            "score_A": 10,
            "score_B": 3,
            "human_ref_A": "Rayleigh scattering.",
            "human_ref_B": "Because.",
            "labels": label,
            "seconds_difference": 1.0,
            "score_ratio": 3.3,
        }

    ds = _load(_jsonl(tmp_path / "shp.jsonl", [row(1), row(0)]), "shp", "preference")
    assert [(ds[i]["chosen"], ds[i]["rejected"]) for i in range(2)] == [
        ("Rayleigh scattering.", "Because."),
        ("Because.", "Rayleigh scattering."),
    ]
    assert ds[0]["domain"] == "askscience_train"


def test_geometry3k(tmp_path):
    features = Features({"images": Sequence(Image()), "problem": Value("string"), "answer": Value("string")})
    rows = [
        {"images": [{"bytes": _png("red"), "path": None}], "problem": "<image>Find x. Choices: A:2 B:3", "answer": "3"},
        {
            "images": [{"bytes": _png("red"), "path": None}],
            "problem": "<image><image>Two markers, one image.",
            "answer": "1",
        },
    ]
    path = _hub_parquet(tmp_path / "geo.parquet", rows, features)
    ds = _load(path, "geometry3k", "rl")
    assert len(ds) == 1 and ds[0]["answer"] == "3" and _parts(ds[0]) == ["image", "text"]
    report = validate_source(Source.of(SourceConfig(source=path, preset="geometry3k"), "rl"), "rl")
    assert "prompt has 2 <image> marker(s) but the row has 1 image(s)" in report.errors[0].reason


def test_multimodal_open_r1_8k(tmp_path):
    features = Features(
        {
            "image": Image(),
            "problem": Value("string"),
            "solution": Value("string"),
            "original_question": Value("string"),
            "original_answer": Value("string"),
        }
    )
    rows = [
        {
            "image": {"bytes": _png("blue"), "path": None},
            "problem": "How many?",
            "solution": "<answer> 5 </answer>",
            "original_question": "q",
            "original_answer": "5",
        }
    ]
    ds = _load(_hub_parquet(tmp_path / "r1.parquet", rows, features), "multimodal-open-r1-8k", "rl")
    assert ds[0]["answer"] == "5" and _images(ds[0]) == ["blue"] and _parts(ds[0]) == ["image", "text"]


def test_presets_and_columns_through_validate_data(tmp_path, capsys):
    path = _jsonl(tmp_path / "shp.jsonl", [{"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 1}])
    assert cli(["validate-data", path, "--kind", "preference", "--preset", "shp"]) == 0
    assert "1 rows, 1 valid, 0 bad" in capsys.readouterr().out
    custom = _jsonl(tmp_path / "rl.jsonl", [{"question": "2+2?", "solution": "4"}, {"question": "3+3?"}])
    assert cli(["validate-data", custom, "--column", "prompt=question", "--column", "answer=solution"]) == 0
    out = capsys.readouterr().out
    assert "2 rows, 2 valid, 0 bad" in out and "1 valid row(s) have no answer (row 2)" in out  # jsonl: its line
    many = _jsonl(tmp_path / "many.jsonl", [{"question": f"{i}?"} for i in range(12)])
    assert cli(["validate-data", many, "--column", "prompt=question"]) == 0
    assert "12 valid row(s) have no answer (row 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more)" in capsys.readouterr().out
    assert cli(["validate-data", custom, "--column", "promt=question"]) == 2
    err = capsys.readouterr().err
    assert "'promt' is not a field of rl rows" in err and "did you mean 'prompt'?" in err
    assert cli(["validate-data", "--preset", "geometr3k"]) == 2
    assert "unknown data preset 'geometr3k'; did you mean 'geometry3k'" in capsys.readouterr().err


def test_a_preset_that_is_not_here_says_the_hub_is_offline(capsys):
    assert cli(["validate-data", "--kind", "preference", "--preset", "rlaif-v"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'openbmb/RLAIF-V-Dataset' not found locally and the hub is offline" in err
    assert "Traceback" not in err


def test_the_shipped_reward_model_configs_stop_with_a_clear_error_when_the_hub_is_offline(capsys):
    from pathlib import Path

    configs = Path(__file__).parent.parent / "recipes" / "configs"
    for config in ("gpu_rm_qwen25vl7b.yaml", "gpu_rm_qwen25_7b_text.yaml"):
        assert cli(["train-rm", str(configs / config), "output_dir=/tmp/brl-offline-check"]) == 2
        err = capsys.readouterr().err
        assert "not found locally and the hub is offline" in err and "Traceback" not in err, err


def test_grpo_says_how_many_rows_have_no_answer_before_it_trains(tmp_path, caplog):
    import logging

    from recipes.grpo import report_rows_without_answer
    from rl.config import RewardConfig

    ds = Dataset.from_dict({"answer": ["a", None, None]})
    with caplog.at_level(logging.WARNING, logger="brl.grpo"):
        assert report_rows_without_answer(ds, RewardConfig(scheme="hybrid")) == 2
    assert "2 of 3 training rows have no answer: the hybrid reward scores them by its model branch alone" in caplog.text

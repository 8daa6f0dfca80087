"""Bad input: every broken row is reported by number and reason; nothing crashes."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from recipes.cli import main as cli
from rl.config import ValidationConfig
from rl.data import DataError, load_rows, validate_source


def _png(color="red", size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _huge_header_png(width=60_000, height=60_000) -> bytes:
    """A real small PNG whose IHDR (CRC fixed up) claims a multi-gigapixel size: a decompression bomb."""
    data = bytearray(_png())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.fixture()
def corpus(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(_png())
    (tmp_path / "img" / "truncated.png").write_bytes(_png(size=(64, 64))[:60])
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path / "img" / "text.png").write_bytes(b"this is not an image at all")
    (tmp_path / "img" / "huge.png").write_bytes(_huge_header_png())
    good = {"prompt": "What color?", "images": ["img/ok.png"], "answer": "red"}
    lines = [
        json.dumps(good),  # 1 ok
        json.dumps({**good, "images": ["img/truncated.png"]}),  # 2 truncated PNG
        json.dumps({**good, "images": ["img/empty.png"]}),  # 3 zero-byte file
        json.dumps({**good, "images": ["img/text.png"]}),  # 4 non-image bytes
        json.dumps({**good, "images": ["img/huge.png"]}),  # 5 huge-dimension header
        json.dumps({**good, "images": ["img/missing.png"]}),  # 6 missing path
        "",  # blank lines are skipped
        json.dumps({**good, "answer": "   "}),  # 8 whitespace-only answer
        json.dumps({**good, "prompt": 42}),  # 9 wrong type
        json.dumps({"images": ["img/ok.png"], "answer": "red"}),  # 10 missing prompt
        '{"prompt": "broken json", ',  # 11 invalid JSON
        json.dumps(good),  # 12 ok
    ]
    data = (
        b"\n".join(line.encode() for line in lines) + b"\n" + b'{"prompt": "caf\xe9", "answer": "x"}\n'
    )  # 13 not UTF-8
    path = tmp_path / "rl.jsonl"
    path.write_bytes(data)
    return path


EXPECTED = {
    2: "cannot decode",
    3: "empty file",
    4: "cannot decode",
    5: "decompression bomb",
    6: "not found",
    8: "whitespace",
    9: "prompt must be",
    10: "missing field",
    11: "not valid JSON",
    13: "not UTF-8",
}


def test_every_bad_row_is_reported_with_its_number_and_reason(corpus):
    report = validate_source(str(corpus), "rl", ValidationConfig(max_image_pixels=10_000_000))
    assert report.ok == 2 and report.total == 12  # the blank line is not a row; numbers are lines
    reasons = {e.row: e.reason for e in report.errors}
    assert set(reasons) == set(EXPECTED)
    for row, fragment in EXPECTED.items():
        assert fragment in reasons[row], (row, reasons[row])


def test_skip_policy_keeps_the_good_rows_and_abort_policy_lists_them_all(corpus):
    ds = load_rows(str(corpus), "rl", ValidationConfig(on_bad_row="skip", max_image_pixels=10_000_000))
    assert len(ds) == 2 and ds[0]["answer"] == "red" and ds[0]["images"][0].size == (8, 8)
    assert [p["type"] for p in ds[0]["prompt"][0]["content"]] == ["image", "text"]
    with pytest.raises(DataError) as err:
        load_rows(str(corpus), "rl", ValidationConfig(on_bad_row="abort", max_image_pixels=10_000_000))
    assert "row 2:" in str(err.value) and "row 13:" in str(err.value)


def test_validate_data_cli_prints_a_report_not_a_traceback(corpus, capsys):
    assert cli(["validate-data", str(corpus), "--kind", "rl"]) == 1
    out = capsys.readouterr()
    assert "12 rows, 2 valid, 10 bad" in out.out and "row 5:" in out.out and "Traceback" not in out.out + out.err


def test_the_configured_pixel_bound_is_enforced(tmp_path):
    (tmp_path / "big.png").write_bytes(_png(size=(100, 100)))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "images": ["big.png"], "answer": "x"}))
    report = validate_source(str(path), "rl", ValidationConfig(max_image_pixels=5_000))
    assert "100x100 pixels, more than max_image_pixels=5000" in report.errors[0].reason


def test_missing_file_is_a_clean_error(tmp_path, capsys):
    assert cli(["validate-data", str(tmp_path / "nope.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_preference_rows(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"},
        {"prompt": "x", "chosen": "a"},
        {"prompt": "x", "chosen": "a", "rejected": 3},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = validate_source(str(path), "preference")
    assert report.ok == 1 and load_rows(str(path), "preference", ValidationConfig())[0]["images"] == []
    assert {e.row: e.reason for e in report.errors} == {
        2: "missing field(s) ['rejected']",
        3: "rejected must be a string or a list of messages, got int",
    }


def test_placeholder_count_must_match_images(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    row = {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "q"}]}],
        "images": ["a.png"],
        "answer": "x",
    }
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row))
    report = validate_source(str(path), "rl")
    assert "2 image placeholder(s) but the row has 1 image(s)" in report.errors[0].reason


def test_grpo_recipe_skips_bad_rows_and_trains(tmp_path, corpus, warm_policy):
    from recipes import grpo

    cfg = grpo.load(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"policy.path={warm_policy}",
            f"data.source={corpus}",
            "data.validation.max_image_pixels=10000000",
            "trainer.max_steps=1",
            "trainer.per_device_train_batch_size=4",
            "trainer.num_generations=2",
            "trainer.max_completion_length=4",
            "trainer.report_to=[]",
        ],
    )
    assert grpo.main(cfg)["global_step"] == 1


def test_integrity_checks_without_decoding_still_catch_broken_files(corpus):
    """validation.decode_images=false (very large sets): headers and integrity checked, no pixels decoded."""
    report = validate_source(str(corpus), "rl", ValidationConfig(max_image_pixels=10_000_000, decode_images=False))
    reasons = {e.row: e.reason for e in report.errors}
    assert report.ok == 2 and set(reasons) == set(EXPECTED)
    assert "cannot decode" in reasons[2] and "cannot decode" in reasons[4]


def test_a_truncated_image_is_refused_even_where_a_library_told_pil_to_forgive_it(corpus, monkeypatch):
    """lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES on import; validation does not depend on it."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    report = validate_source(str(corpus), "rl", ValidationConfig(max_image_pixels=10_000_000))
    assert report.ok == 2 and any(e.row == 2 and "cannot decode" in e.reason for e in report.errors)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is given back

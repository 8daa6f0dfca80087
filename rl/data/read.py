"""Reading raw rows from wherever a dataset lives, one at a time: JSON Lines / JSON / parquet files,
a downloaded dataset directory described by a `meta.json` (MMPR's layout: annotation files, each
with its image root), or a hub dataset. Nothing is decoded here (images stay paths or bytes), and a
row that cannot be read is a `RowError`, never an exception that stops the read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_TYPES = (".jsonl", ".json", ".parquet")
IMAGE_ROOT_KEY = "_image_root"  # set on rows whose images are relative to a per-file root (MMPR)


class DataError(ValueError):
    """Bad input data or a source that cannot be read: the message names the source, rows and reasons."""


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based line number for jsonl, 0-based row index otherwise
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield lineno, RowError(lineno, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                yield lineno, RowError(lineno, f"not valid JSON ({e.msg}, column {e.colno})")
                continue
            yield (
                lineno,
                row if isinstance(row, dict) else RowError(lineno, f"expected an object, got {type(row).__name__}"),
            )


def _iter_file(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(path)
        except Exception as e:
            raise DataError(f"{path}: cannot read parquet file: {e}") from None
        index = 0
        for batch in reader.iter_batches(batch_size=1024):  # a batch at a time: never the whole file
            for row in batch.to_pylist():
                yield index, row
                index += 1
    elif path.suffix == ".json" and path.read_bytes()[:1].strip() == b"[":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a valid JSON array: {e}") from None
        yield from enumerate(rows)
    else:
        yield from _iter_jsonl(path)


def _iter_meta(directory: Path) -> Iterator[tuple[int, dict | RowError]]:
    """A dataset directory with a meta.json naming its annotation files and their image roots
    ({"name": {"annotation": "annotations/x.jsonl", "root": "images/x", ...}}, as MMPR ships)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{directory}/meta.json: cannot read it: {e}") from None
    index = 0
    for name, entry in meta.items():
        annotation = directory / entry["annotation"]
        if not annotation.is_file():
            raise DataError(f"{directory}/meta.json: the annotation file of {name!r} ({annotation}) is missing")
        root = str(directory / entry.get("root", ""))
        for _, row in _iter_file(annotation):
            index += 1
            if isinstance(row, RowError):
                yield index, RowError(index, f"{annotation.name} line {row.row}: {row.reason}")
            else:
                yield index, {**row, IMAGE_ROOT_KEY: root}


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_dataset(source: str, split: str) -> Any:
    """A hub dataset by name (from the local cache when offline), with images left undecoded."""
    from datasets import Image, Sequence, load_dataset

    try:
        ds = load_dataset(source, split=split)
    except Exception as e:  # not cached, no network, no such dataset or split: say which
        if hub_offline() or "offline" in str(e).lower() or "connection" in str(e).lower():
            raise DataError(
                f"dataset {source!r} not found locally and the hub is offline: download it where the "
                f"hub is reachable (`huggingface-cli download --repo-type dataset {source}`) and point the "
                f"source at the local copy, or unset HF_HUB_OFFLINE"
            ) from None
        raise DataError(f"{source}: cannot load as a file or hub dataset ({type(e).__name__}: {e})") from None
    for name, feature in ds.features.items():  # read images as {bytes, path}: decoded when a batch needs them
        if isinstance(feature, Image):
            ds = ds.cast_column(name, Image(decode=False))
        elif isinstance(feature, Sequence) and isinstance(feature.feature, Image):
            ds = ds.cast_column(name, Sequence(Image(decode=False)))
        elif isinstance(feature, list) and feature and isinstance(feature[0], Image):
            ds = ds.cast_column(name, [Image(decode=False)])
    return ds


def iter_rows(source: str, split: str = "train") -> Iterator[tuple[int, dict | RowError]]:
    """(row number, raw row or RowError) for every row of `source`: a .jsonl / .json / .parquet file,
    a directory with a meta.json, or a hub dataset name."""
    path = Path(source)
    if path.suffix in FILE_TYPES:
        if not path.is_file():
            raise DataError(f"{source}: file not found")
        yield from _iter_file(path)
        return
    if path.is_dir() and (path / "meta.json").is_file():
        yield from _iter_meta(path)
        return
    if path.exists():
        raise DataError(
            f"{source}: unsupported source (a .jsonl, .json or .parquet file, a directory with a "
            "meta.json, or a hub dataset name)"
        )
    yield from enumerate(load_hub_dataset(source, split))

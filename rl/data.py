"""Load and validate datasets for every recipe: RL rows and preference pairs.

RL rows:          {prompt, images, answer}            (answer may be absent: no ground truth)
Preference rows:  {prompt, images, chosen, rejected}

`prompt` is a string or a list of chat messages; `images` is a list of image files (relative to the
data file) or, for hub datasets, decoded images. Every row is checked before training starts, and
a bad row is reported by its number and reason; `on_bad_row` decides between skipping (counted and
reported) and aborting. Nothing here raises a bare traceback for a user's data error.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from policies.chat import with_image_parts
from rl.config import DataConfig, ValidationConfig

log = logging.getLogger(__name__)

REQUIRED = {"rl": ("prompt",), "preference": ("prompt", "chosen", "rejected")}
TEXT_FIELDS = {"rl": ("answer",), "preference": ("chosen", "rejected")}

MESSAGE_FEATURE = [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}]


def features_for(kind: str) -> Features:
    base = {"prompt": MESSAGE_FEATURE, "images": Sequence(Image())}
    if kind == "rl":
        return Features({**base, "answer": Value("string")})
    return Features({**base, "chosen": Value("string"), "rejected": Value("string")})


class DataError(ValueError):
    """Bad input data: the message lists each bad row with its number and reason."""


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based line number for jsonl, 0-based row index otherwise
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass
class ValidationReport:
    source: str
    kind: str
    total: int
    errors: list[RowError]

    @property
    def ok(self) -> int:
        return self.total - len({e.row for e in self.errors})

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {self.total} rows, {self.ok} valid, {len({e.row for e in self.errors})} bad"]
        lines += [f"  {e}" for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading raw rows
# ---------------------------------------------------------------------------------------------


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
            yield lineno, row if isinstance(row, dict) else RowError(lineno, f"expected an object, got {type(row).__name__}")


def iter_rows(source: str, split: str) -> Iterator[tuple[int, dict | RowError]]:
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"{source}: file not found")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:
                raise DataError(f"{source}: cannot read parquet file: {e}") from None
            yield from enumerate(table.to_pylist())
        elif path.suffix == ".json" and path.read_bytes()[:1].strip() == b"[":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{source}: not a valid JSON array: {e}") from None
            yield from enumerate(rows)
        else:
            yield from _iter_jsonl(path)
        return
    if path.exists():
        raise DataError(f"{source}: unsupported file type (use .jsonl, .json or .parquet)")
    from datasets import load_dataset  # a hub dataset by name (needs network or a local HF cache)

    try:
        ds = load_dataset(source, split=split)
    except Exception as e:
        raise DataError(f"{source}: cannot load as a file or hub dataset ({type(e).__name__}: {e})") from None
    yield from enumerate(ds)


# ---------------------------------------------------------------------------------------------
# Validating one row
# ---------------------------------------------------------------------------------------------


def _normalise_prompt(prompt: Any, n_images: int, max_chars: int) -> list[dict]:
    """A string or messages -> messages whose content is a list of typed parts (Arrow-friendly), with
    one image placeholder per image (put before the first user text when the prompt has none)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty")
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"prompt must be a string or a non-empty list of messages, got {type(prompt).__name__}")
    messages, chars = [], 0
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"prompt[{i}] must be a message with role system/user/assistant")
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    parts.append({"type": "image", "text": None})
                elif kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                else:
                    raise ValueError(f"prompt[{i}].content has an invalid part {str(part)[:80]!r}")
        else:
            raise ValueError(f"prompt[{i}].content must be a string or a list of parts")
        chars += sum(len(p["text"] or "") for p in parts)
        messages.append({"role": m["role"], "content": parts})
    if chars > max_chars:
        raise ValueError(f"prompt has {chars} characters, more than max_prompt_chars={max_chars}")
    return with_image_parts(messages, n_images)


def check_image(image: Any, base_dir: Path | None, max_pixels: int) -> Any:
    """Return a value the `Image()` feature accepts, after proving the image decodes within bounds."""
    if isinstance(image, PILImage.Image):
        pil = image
        if pil.width * pil.height > max_pixels:
            raise ValueError(f"image is {pil.width}x{pil.height}, more than max_image_pixels={max_pixels}")
        return pil
    if isinstance(image, dict) and image.get("bytes"):
        data, label = image["bytes"], "embedded image"
    elif isinstance(image, (str, dict)):
        rel = image if isinstance(image, str) else image.get("path")
        if not rel:
            raise ValueError("image entry has neither a path nor bytes")
        p = Path(rel)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise ValueError(f"image file not found: {rel}")
        data, label = p.read_bytes(), str(rel)
    else:
        raise ValueError(f"image must be a path, bytes or an image, got {type(image).__name__}")
    if not data:
        raise ValueError(f"{label}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            with PILImage.open(io.BytesIO(data)) as im:
                # The header alone tells the size: refuse huge images before decoding any pixels.
                if im.width * im.height > max_pixels:
                    raise ValueError(f"{label}: {im.width}x{im.height} pixels, more than max_image_pixels={max_pixels}")
                im.load()
        except ValueError:
            raise
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
            raise ValueError(f"{label}: refused as a decompression bomb ({e})") from None
        except Exception as e:  # truncated files, non-image bytes, unsupported formats
            raise ValueError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from None
    return {"bytes": data, "path": None}


def validate_row(row: dict, kind: str, base_dir: Path | None, cfg: ValidationConfig) -> dict:
    """Check one raw row and return it normalised; raises ValueError with the reason."""
    missing = [k for k in REQUIRED[kind] if k not in row or row[k] is None]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    images = row.get("images")
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    images = images or []
    if not isinstance(images, list):
        raise ValueError(f"images must be a list, got {type(images).__name__}")
    checked = []
    for i, img in enumerate(images):
        try:
            checked.append(check_image(img, base_dir, cfg.max_image_pixels))
        except ValueError as e:
            raise ValueError(f"images[{i}]: {e}") from None
    # Extra scalar columns (task, id, difficulty, ...) are kept: custom rewards receive them as kwargs.
    out = {k: v for k, v in row.items() if k not in ("image", "images") and isinstance(v, (str, int, float, bool))}
    out["prompt"] = _normalise_prompt(row["prompt"], len(checked), cfg.max_prompt_chars)
    out["images"] = checked
    for name in TEXT_FIELDS[kind]:
        value = row.get(name)
        if value is None and kind == "rl":
            out[name] = None  # no ground truth: rule rewards return None for this row
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "rl":
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{name} is empty or whitespace only")
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def validate_source(source: str, kind: str, cfg: ValidationConfig | None = None,
                    split: str = "train") -> tuple[list[dict], ValidationReport]:
    """Read every row of `source`, returning the good rows (normalised) and a report of the bad ones."""
    if kind not in REQUIRED:
        raise DataError(f"unknown data kind {kind!r}; use one of {sorted(REQUIRED)}")
    cfg = cfg or ValidationConfig()
    base_dir = Path(source).parent if Path(source).exists() else None
    good, errors, total = [], [], 0
    for rownum, row in iter_rows(source, split):
        total += 1
        if isinstance(row, RowError):
            errors.append(row)
            continue
        try:
            good.append(validate_row(row, kind, base_dir, cfg))
        except ValueError as e:
            errors.append(RowError(rownum, str(e)))
    return good, ValidationReport(source, kind, total, errors)


def load_rows(source: str, kind: str, cfg: ValidationConfig, split: str = "train") -> Dataset:
    """Validated rows of `source` as a Dataset; bad rows are skipped and reported, or abort the load."""
    if cfg.on_bad_row not in ("skip", "abort"):
        raise DataError(f"validation.on_bad_row must be 'skip' or 'abort', got {cfg.on_bad_row!r}")
    good, report = validate_source(source, kind, cfg, split)
    if report.errors:
        if cfg.on_bad_row == "abort":
            raise DataError(f"bad rows (data.on_bad_row=abort):\n{report.summary()}")
        log.warning("skipping bad rows (data.on_bad_row=skip):\n%s", report.summary())
    if not good:
        raise DataError(f"{source}: no valid rows ({report.total} read)\n{report.summary()}")
    ds = Dataset.from_list(good)
    for name, feature in features_for(kind).items():
        ds = ds.cast_column(name, feature)
    return ds


def load_rl_splits(cfg: DataConfig) -> tuple[Dataset, Dataset | None]:
    """Train and held-out RL datasets for a recipe's `data` section."""
    if cfg.source == "shapes":
        from rl.tasks.shapes import make_shapes_splits

        return make_shapes_splits(cfg.train_size, cfg.eval_size, cfg.seed, tuple(cfg.tasks))
    train = load_rows(cfg.source, "rl", cfg.validation, cfg.split)
    held_out = load_rows(cfg.eval_source, "rl", cfg.validation, cfg.eval_split) if cfg.eval_source else None
    return train, held_out


def _preference_source(source: str, split: str, size: int, seed: int, validation: ValidationConfig) -> Dataset:
    if source == "shapes":
        from rl.tasks.shapes import make_preference_pairs

        return make_preference_pairs(size, seed)
    return load_rows(source, "preference", validation, split)


def load_preference_mixture(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """Train mixture of the configured preference sources (sampled by weight) and the eval set.

    `cfg` is an `rl.config.PreferenceDataConfig`. Columns are cut to the common four so multimodal
    and text-only sets mix (a text-only row has an empty `images` list)."""
    from datasets import interleave_datasets

    if not cfg.sources:
        raise DataError("data.sources is empty: name at least one preference dataset")
    weights = [s.weight for s in cfg.sources]
    if any(w <= 0 for w in weights):
        raise DataError(f"data.sources[].weight must be > 0, got {weights}")
    features = features_for("preference")
    parts = [_preference_source(s.source, s.split, s.size, s.seed, cfg.validation)
             .select_columns(list(features)).cast(features) for s in cfg.sources]
    seed = cfg.sources[0].seed
    if len(parts) == 1:
        train = parts[0]
    else:
        total = sum(weights)
        train = interleave_datasets(parts, probabilities=[w / total for w in weights], seed=seed,
                                    stopping_strategy="all_exhausted")
    if cfg.total_size is not None:
        train = train.shuffle(seed=seed).select(range(min(cfg.total_size, len(train))))
    eval_set = None
    if cfg.eval_source:  # "shapes": a disjoint seed, so held-out scenes are new
        eval_set = _preference_source(cfg.eval_source, cfg.eval_split, cfg.eval_size, seed + 1_000_003,
                                      cfg.validation)
    return train, eval_set

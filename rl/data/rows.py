"""One row, from a dataset's own schema to the project's, checked.

RL rows:          {prompt, images, answer}            (answer may be absent: no ground truth)
Preference rows:  {prompt, images, chosen, rejected}

A source's `columns` say where each field is (`prompt: question`, `images: image`, ...); images may
be embedded (datasets' Image, `{"bytes": ...}`) or paths (relative to `image_root`, else to the data
file), one image or a list; a prompt string's `<image>` markers become image parts; `chosen` and
`rejected` may be strings or message lists (their last assistant turn is the response, and the turns
before it, which must agree, the prompt when the row has none). Every problem is a ValueError naming
the field and the reason; the caller turns it into that row's error.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import ImageFile

from policies.chat import message_text, parts_from_placeholders, with_image_parts
from rl.config import ValidationConfig
from rl.data.read import IMAGE_ROOT_KEY

FIELDS = {"rl": ("prompt", "images", "answer"), "preference": ("prompt", "images", "chosen", "rejected")}
REQUIRED = {"rl": ("prompt",), "preference": ("chosen", "rejected")}


def map_columns(row: dict, kind: str, columns: Mapping[str, str]) -> dict:
    """`row` with the project's field names (each read from the column `columns` names, by default its
    own, and `images` from `image` when there is no `images`); other columns kept as they are."""
    out = dict(row)
    for name in FIELDS[kind]:
        column = columns.get(name, name)
        if name == "images" and "images" not in columns and "images" not in row:
            column = "image"
        if column != name:
            out.pop(column, None)
            if column in row:
                out[name] = row[column]
    return out


def check_image(image: Any, base_dir: Path | None, max_pixels: int, decode: bool = True) -> Any:
    """The image as the `Image()` feature stores it, after proving it decodes within bounds: a path
    stays a path (decoded when a batch needs it), embedded bytes stay bytes."""
    if isinstance(image, PILImage.Image):  # an in-memory dataset's: the Image feature encodes it
        if image.width * image.height > max_pixels:
            raise ValueError(f"image is {image.width}x{image.height}, more than max_image_pixels={max_pixels}")
        return image
    path = None
    if isinstance(image, dict) and image.get("bytes"):
        data, label = image["bytes"], "embedded image"
    elif isinstance(image, (str, dict)):
        rel = image if isinstance(image, str) else image.get("path")
        if not rel:
            raise ValueError("image entry has neither a path nor bytes")
        path = Path(rel)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ValueError(f"image file not found: {rel}" + (f" (looked in {base_dir})" if base_dir else ""))
        data, label = path.read_bytes(), str(rel)
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
                # A library may have set PIL's process-wide LOAD_TRUNCATED_IMAGES (lmms-eval does, on import),
                # which makes a truncated file decode with grey pixels: refused here whatever it says.
                forgiving, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
                try:
                    im.load() if decode else im.verify()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = forgiving
        except ValueError:
            raise
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
            raise ValueError(f"{label}: refused as a decompression bomb ({e})") from None
        except Exception as e:  # truncated files, non-image bytes, unsupported formats
            raise ValueError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from None
    return {"bytes": None, "path": str(path.resolve())} if path is not None else {"bytes": data, "path": None}


def normalise_prompt(prompt: Any, n_images: int, max_chars: int) -> list[dict]:
    """A string (with or without `<image>` markers) or messages -> messages whose content is a list of
    typed parts (Arrow-friendly), with one image placeholder per image."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty")
        if len(prompt) > max_chars:
            raise ValueError(f"prompt has {len(prompt)} characters, more than max_prompt_chars={max_chars}")
        return [{"role": "user", "content": parts_from_placeholders(prompt, n_images)}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"prompt must be a string or a non-empty list of messages, got {type(prompt).__name__}")
    messages, chars = [], 0
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"prompt[{i}] must be a message with role system/user/assistant")
        content = m.get("content")
        if isinstance(content, str):
            parts = (
                parts_from_placeholders(content, n_images)
                if "<image>" in content
                else [{"type": "text", "text": content}]
            )
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


def _response(value: Any, name: str) -> tuple[list[dict] | None, str]:
    """(the turns before the response, the response text) of a chosen/rejected string or message list."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        if value[-1].get("role") != "assistant":
            raise ValueError(f"{name} is a message list whose last turn is not the assistant's")
        return value[:-1], message_text(value[-1])
    raise ValueError(f"{name} must be a string or a list of messages, got {type(value).__name__}")


def _turns_key(turns: list[dict]) -> list[tuple]:
    return [(m.get("role"), message_text(m)) for m in turns]


def validate_row(
    row: dict, kind: str, base_dir: Path | None, cfg: ValidationConfig, columns: Mapping[str, str] = {}
) -> dict:  # noqa: B006 - read only
    """One raw row in the dataset's own schema -> the project's, checked; raises ValueError with the reason."""
    row = map_columns(row, kind, columns)
    missing = [k for k in REQUIRED[kind] if k not in row or row[k] is None]
    if missing:
        raise ValueError(f"missing field(s) {missing}" + (f" (columns: {dict(columns)})" if columns else ""))
    images = row.get("images")
    images = [] if images is None else images if isinstance(images, list) else [images]
    base = Path(row[IMAGE_ROOT_KEY]) if row.get(IMAGE_ROOT_KEY) else base_dir
    checked = []
    for i, img in enumerate(images):
        try:
            checked.append(check_image(img, base, cfg.max_image_pixels, cfg.decode_images))
        except ValueError as e:
            raise ValueError(f"images[{i}]: {e}") from None
    # Extra scalar columns (task, id, difficulty, ...) are kept: custom rewards receive them as kwargs.
    out = {
        k: v
        for k, v in row.items()
        if k not in (*FIELDS[kind], "image", IMAGE_ROOT_KEY) and isinstance(v, (str, int, float, bool))
    }
    prompt = row.get("prompt")
    if kind == "preference":
        (chosen_turns, chosen), (rejected_turns, rejected) = (
            _response(row["chosen"], "chosen"),
            _response(row["rejected"], "rejected"),
        )
        if (
            chosen_turns is not None
            and rejected_turns is not None
            and _turns_key(chosen_turns) != _turns_key(rejected_turns)
        ):
            raise ValueError("chosen and rejected disagree on the prompt turns before the response")
        if prompt is None:
            prompt = chosen_turns or rejected_turns
            if not prompt:
                raise ValueError("missing field(s) ['prompt'] (and chosen/rejected carry no prompt turns)")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value.strip():
                raise ValueError(f"{name} is empty or whitespace only")
            out[name] = value
    else:
        answer = row.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"answer must be a string, got {type(answer).__name__}")
        if answer is not None and not answer.strip():
            raise ValueError("answer is empty or whitespace only")
        out["answer"] = answer  # None: no ground truth; rule rewards return None for this row
    out["prompt"] = normalise_prompt(prompt, len(checked), cfg.max_prompt_chars)
    out["images"] = checked
    return out

"""Chat messages and their images: the one home for rendering prompts and handling image placeholders.

A prompt is a string or a list of chat messages; a message's content is a string or a list of typed
parts (`{"type": "text", "text": ...}`, `{"type": "image"}`, where TRL puts the PIL image itself
under `"image"`). Data loading, the rollout engines, the reward scorer, the reward-model trainer and
the benchmarks all go through these functions, so a prompt renders the same everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def message_text(message: Any) -> str:
    """Text of one chat message (string content or a list of typed parts)."""
    content = message.get("content") if isinstance(message, dict) else message
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages (a plain string is one user message)."""
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "image"


def count_image_parts(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list) for p in m["content"] if _is_image_part(p))


def embedded_images(messages: list[dict]) -> list[Any]:
    """Images carried inside image parts (TRL fills `part["image"]`), in order."""
    return [
        p["image"]
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if _is_image_part(p) and p.get("image") is not None
    ]


def with_image_parts(messages: list[dict], n_images: int) -> list[dict]:
    """Messages with `n_images` image placeholders before the first user message's text, when the
    messages carry none yet (as TRL does for plain-text prompts with images). Messages that already
    have placeholders must have exactly one per image. Returns new messages; the input is untouched.

    Placeholders are `{"type": "image", "text": None}`: every part has the same keys, as Arrow needs."""
    have = count_image_parts(messages)
    if have:
        if have != n_images:
            raise ValueError(f"prompt has {have} image placeholder(s) but the row has {n_images} image(s)")
        return messages
    if not n_images:
        return messages
    first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first is None:
        raise ValueError("prompt has images but no user message to attach them to")
    user = messages[first]
    content = user.get("content")
    parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
    placed = {**user, "content": [{"type": "image", "text": None}] * n_images + list(parts)}
    return [*messages[:first], placed, *messages[first + 1 :]]


IMAGE_PLACEHOLDER = "<image>"  # how LLaVA-style datasets mark where an image goes in a prompt string


def parts_from_placeholders(text: str, n_images: int, placeholder: str = IMAGE_PLACEHOLDER) -> list[dict]:
    """A prompt string with `<image>` markers as content parts: an image part at each marker (their
    count must equal the number of images), the text between them as text parts. A string without
    markers gets its images' parts before the text."""
    pieces = text.split(placeholder)
    markers = len(pieces) - 1
    if markers == 0:
        return [{"type": "image", "text": None}] * n_images + [{"type": "text", "text": text}]
    if markers != n_images:
        raise ValueError(f"prompt has {markers} {placeholder} marker(s) but the row has {n_images} image(s)")
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image", "text": None})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip("\n") if i == 0 or i == markers else piece})
    return parts


def images_of(request: Any) -> list[Any]:
    """A request's images: embedded ones if present, else the request's `images` list; as RGB.
    The number of image placeholders must equal the number of images."""
    images = embedded_images(request.messages) or list(request.images or [])
    slots = count_image_parts(request.messages)
    if slots != len(images):
        raise ValueError(f"prompt has {slots} image placeholder(s) but {len(images)} image(s) were given")
    return [img.convert("RGB") if hasattr(img, "convert") else img for img in images]


def image_fingerprint(image: Any) -> tuple | None:
    """What tells two images apart (size, mode and a checksum of the pixels); None for no image.

    crc32 rather than a cryptographic hash: it runs at memory speed, and what it guards against is
    mixing up two rows of a batch, not an adversary."""
    if image is None:
        return None
    if hasattr(image, "tobytes"):
        return image.size, image.mode, zlib.crc32(image.tobytes())
    return ("ref", str(image))  # a path or URL


def fingerprints(images: Sequence[Any]) -> list[tuple | None]:
    """`image_fingerprint` of each image; an object that occurs several times is checksummed once."""
    by_object: dict[int, tuple | None] = {}
    for image in images:
        if id(image) not in by_object:
            by_object[id(image)] = image_fingerprint(image)
    return [by_object[id(image)] for image in images]


def share_equal_images(rows: Sequence[Any]) -> list[Any]:
    """Per-row image lists (an `images` column) with equal images made one object. GRPO's G rows of a
    prompt each carry their own decoded copy of its images; pickled (Ray), one object is sent once,
    so the copies then cost nothing to ship. Rows that are not lists are kept as they are."""
    first: dict[tuple | None, Any] = {}
    return [
        [first.setdefault(key, image) for key, image in zip(fingerprints(row), row)]
        if isinstance(row, (list, tuple))
        else row
        for row in rows
    ]


def prompt_key(prompt: str | list[dict], images: Sequence[Any] = ()) -> tuple:
    """The identity of a prompt: roles, texts and the images' pixels, in order. Two rows with the
    same question and different images are different prompts."""
    if isinstance(prompt, str):
        return (prompt, *(image_fingerprint(i) for i in images))
    key: list[Any] = []
    for m in prompt:
        content = m.get("content")
        if not isinstance(content, list):
            key.append((m.get("role"), content))
            continue
        for p in content:
            key.append(
                (m.get("role"), "image", image_fingerprint(p.get("image")))
                if _is_image_part(p)
                else (m.get("role"), p.get("text"))
            )
    return (*key, *(image_fingerprint(i) for i in images))


def placeholder_messages(messages: list[dict]) -> list[dict]:
    """Messages as a processor's chat template expects: image parts without payloads, text parts."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [
                {"type": "image"} if _is_image_part(p) else {"type": "text", "text": p.get("text") or ""}
                for p in content
            ]
        out.append({"role": m["role"], "content": content})
    return out


def text_only_messages(messages: list[dict]) -> list[dict]:
    """Messages with plain-string contents and no image parts (for text-only backbones)."""
    return [{"role": m["role"], "content": message_text(m)} for m in messages]


def is_vlm_processor(processor: Any) -> bool:
    """A multimodal processor wraps a tokenizer; a text-only model's 'processor' is the tokenizer."""
    return getattr(processor, "tokenizer", None) is not None and processor.tokenizer is not processor


def render_prompt(processor: Any, messages: list[dict]) -> str:
    """The prompt text with the generation prompt appended (image placeholders left for the processor)."""
    return processor.apply_chat_template(placeholder_messages(messages), tokenize=False, add_generation_prompt=True)


def render_conversation(processor: Any, messages: list[dict]) -> str:
    """A full conversation (prompt + assistant response) as the model's template writes it.

    The one rendering used both to train reward models and to score with them, so the two agree.
    """
    if is_vlm_processor(processor):
        return processor.apply_chat_template(placeholder_messages(messages), tokenize=False)
    return processor.apply_chat_template(text_only_messages(messages), tokenize=False)


def tokenizer_of(processor: Any) -> Any:
    """A multimodal processor's tokenizer, or the tokenizer itself (a text-only model's "processor")."""
    return getattr(processor, "tokenizer", processor)


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision placeholder tokens a policy must never generate.

    A completion containing `<|image_pad|>` breaks the next forward pass (image tokens no longer
    match the images); weak or random policies do sample them, so generation suppresses them."""
    vocab = tokenizer_of(processor).get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]

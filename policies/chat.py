"""Chat rendering shared by the engines and the reward scorer: templates and image placeholders."""

from __future__ import annotations

from typing import Any


def placeholder_messages(messages: list[dict]) -> list[dict]:
    """Messages as a processor's chat template expects: image parts without payloads, text parts."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if p.get("type") == "image" else {"type": "text", "text": p.get("text") or ""}
                       for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def count_image_parts(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image")


def embedded_images(messages: list[dict]) -> list[Any]:
    """Images carried inside image parts (TRL fills `part["image"]`), in order."""
    return [p["image"] for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image" and p.get("image") is not None]


def images_of(request: Any) -> list[Any]:
    """A request's images: embedded ones if present, else the request's `images` list. Checks the count."""
    images = embedded_images(request.messages) or list(request.images or [])
    slots = count_image_parts(request.messages)
    if slots != len(images):
        raise ValueError(f"prompt has {slots} image placeholder(s) but {len(images)} image(s) were given")
    return [img.convert("RGB") if hasattr(img, "convert") else img for img in images]


def render_prompt(processor: Any, messages: list[dict]) -> str:
    """The prompt text with the generation prompt appended (image placeholders left for the processor)."""
    return processor.apply_chat_template(placeholder_messages(messages), tokenize=False, add_generation_prompt=True)


def text_only_messages(messages: list[dict]) -> list[dict]:
    """Messages with plain-string contents and no image parts (for text-only backbones)."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m.get("content"), str) else
             "".join(p.get("text") or "" for p in m.get("content") or [] if p.get("type") == "text")}
            for m in messages]


def is_vlm_processor(processor: Any) -> bool:
    """A multimodal processor wraps a tokenizer; a text-only model's 'processor' is the tokenizer."""
    return getattr(processor, "tokenizer", None) is not None and processor.tokenizer is not processor


def render_conversation(processor: Any, messages: list[dict]) -> str:
    """A full conversation (prompt + assistant response) as the model's template writes it.

    The one rendering used both to train reward models and to score with them, so the two agree.
    """
    if is_vlm_processor(processor):
        return processor.apply_chat_template(placeholder_messages(messages), tokenize=False)
    return processor.apply_chat_template(text_only_messages(messages), tokenize=False)


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision placeholder tokens a policy must never generate.

    A completion containing `<|image_pad|>` breaks the next forward pass (image tokens no longer
    match the images); weak or random policies do sample them, so generation suppresses them."""
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]

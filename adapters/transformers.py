"""Every use of transformers' private internals, behind named functions.

- The reward scorer processes an image that several rows share once (reward/scorer.py:
  `process_distinct_images`), which it builds from the steps a multimodal processor's `__call__` runs:
  whether a processor runs those standard steps, the text with each image's placeholder tokens
  expanded, and whether it returns `mm_token_type_ids` by default;
- `no_init_weights`, to build a model whose weights are about to be loaded without initialising them.

Written against transformers 5.19 (constraints.txt); tests/test_layers.py keeps these internals here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def runs_standard_steps(processor: Any) -> bool:
    """True when `processor(text=..., images=...)` is ProcessorMixin's own: images through its image
    processor, placeholders expanded by `replace_image_token` (a processor with a `__call__` of its own
    may do anything else)."""
    from transformers.processing_utils import ProcessorMixin

    kind = type(processor)
    return (
        kind.__call__ is ProcessorMixin.__call__
        and kind._process_images is ProcessorMixin._process_images
        and getattr(processor, "image_token", None) is not None
    )


def expand_image_tokens(processor: Any, texts: list[str], pixels: Any, occurrence: list[int]) -> list[str]:
    """`texts` with their k-th image placeholder expanded to the tokens of distinct image `occurrence[k]`
    (`pixels`: the image processor's output for the distinct images)."""
    replacements = [processor.replace_image_token(pixels, image_idx=j) for j in occurrence]
    expanded, _ = processor.get_text_with_replacements(list(texts), replacements)
    return expanded


def returns_mm_token_type_ids(processor: Any) -> bool:
    """Whether the processor adds `mm_token_type_ids` to its outputs by default (Qwen2-VL's do: their
    forward wants them)."""
    defaults = getattr(processor, "valid_processor_kwargs", None)
    return bool(defaults is not None and defaults._defaults.get("text_kwargs", {}).get("return_mm_token_type_ids"))


@contextmanager
def no_init_weights() -> Iterator[None]:
    """Modules built inside skip their weight initialisation (the weights are loaded right after)."""
    from transformers.initialization import no_init_weights as skip

    with skip():
        yield

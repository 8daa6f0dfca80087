"""The reward protocol shared by every reward in this project, and helpers to read TRL's inputs.

A reward is any callable with TRL's reward-function signature:

    reward(prompts, completions, **columns) -> list[float | None]

`prompts` and `completions` are strings or chat messages (as TRL passes them); `columns` carries the
dataset fields (`answer`, `images`, ...) repeated once per completion. `None` means "could not
score": it is counted and logged, never silently turned into 0.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from policies.chat import message_text


@runtime_checkable
class Reward(Protocol):
    __name__: str

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]: ...


def completion_text(completion: Any) -> str:
    """A completion as plain text, whether TRL passed a string or a list of assistant messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(message_text(m) for m in completion)
    return message_text(completion)


def slice_columns(columns: dict[str, Any], index: list[int], n: int) -> dict[str, Any]:
    """The per-sample columns (lists of length n) cut to `index`; everything else passed as is."""
    return {k: [v[i] for i in index] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}


def reward_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)

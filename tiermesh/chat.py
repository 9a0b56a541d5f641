"""A conversation as every tier sees it: role-tagged messages, system text first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


def chatml(messages: list[Message] | tuple[Message, ...]) -> str:
    """The conversation as ChatML text (SmolLM2's template, and many others').

    For engines that take a finished prompt (TensorRT-LLM's `ensemble`). A final
    assistant message is left open: the model continues it.
    """
    parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    if messages and messages[-1].role == "assistant":
        parts[-1] = parts[-1].removesuffix("<|im_end|>\n")
    else:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)

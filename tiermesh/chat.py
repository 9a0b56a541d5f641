"""A conversation as every tier sees it: role-tagged messages, system text first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tiermesh.tier.v1 import tier_pb2

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


def opening(system: str) -> str:
    """What every ChatML prompt with this system text begins with, up to the user's
    words: an engine that keeps evaluated prefixes can evaluate it before any call does
    (Gold warms its personas' openings so)."""
    marked = chatml([Message("system", system), Message("user", "\0")])
    return marked[: marked.index("\0")]


def from_tier(messages: Iterable[tier_pb2.ChatMessage]) -> list[Message]:
    """Messages of the tier contract; KeyError on a message without a valid role."""
    return [Message(_ROLE_NAMES[m.role], m.content) for m in messages]


def to_tier(messages: Iterable[Message]) -> list[tier_pb2.ChatMessage]:
    return [tier_pb2.ChatMessage(role=_ROLE_VALUES[m.role], content=m.content) for m in messages]


_ROLE_VALUES: dict[Role, tier_pb2.Role.ValueType] = {
    "system": tier_pb2.ROLE_SYSTEM,
    "user": tier_pb2.ROLE_USER,
    "assistant": tier_pb2.ROLE_ASSISTANT,
}
_ROLE_NAMES: dict[int, Role] = {value: name for name, value in _ROLE_VALUES.items()}

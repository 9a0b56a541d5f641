"""In-process fakes for testing one policy at a time (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from ops.settings import Settings
from router.call import Call
from router.settings import Persona
from router.validation import resolve
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(**fields: object) -> mesh_pb2.GenerateRequest:
    """A valid public request from guard-1; `fields` override."""
    base: dict[str, object] = {
        "npc_id": "guard-1",
        "prompt": "Who goes there?",
        "task": mesh_pb2.TASK_DIALOGUE,
    }
    return mesh_pb2.GenerateRequest(**(base | fields))  # type: ignore[arg-type]


def a_call(
    task: mesh_pb2.Task.ValueType = mesh_pb2.TASK_DIALOGUE, deadline_s: float = 5.0, **fields: object
) -> Call:
    """A resolved call; `fields` are GenerateRequest fields (prompt, intents, max_tokens…)."""
    return resolve(
        request(**({"prompt": "hello", "task": task} | fields)), SETTINGS.router_config(), deadline_s
    )


SETTINGS = Settings(personas={"guard-1": Persona(system="You guard the gate.", intents=["GREET", "ATTACK"])})


@dataclass
class Step:
    """What a FakeBackend does on one call."""

    tokens: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    first_delay: float = 0.0
    token_delay: float = 0.0  # before each token after the first
    fail_before: StatusError | None = None
    fail_after: int | None = None  # raise UNAVAILABLE after this many tokens


class FakeBackend:
    """A Backend that plays `steps` in order (the last one repeats) and records calls."""

    def __init__(self, *steps: Step, tier: mesh_pb2.Tier.ValueType = mesh_pb2.TIER_SILVER) -> None:
        self.steps = list(steps) or [Step()]
        self.tier = tier
        self.calls: list[Call] = []
        self.called = asyncio.Event()  # set at the first call
        self.cancelled = 0

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        step = self.steps[min(len(self.calls), len(self.steps) - 1)]
        self.calls.append(call)
        self.called.set()
        try:
            if step.first_delay:
                await asyncio.sleep(step.first_delay)
            if step.fail_before is not None:
                raise step.fail_before
            for i, token in enumerate(step.tokens):
                if i and step.token_delay:
                    await asyncio.sleep(step.token_delay)
                if step.fail_after == i:
                    raise StatusError(grpc.StatusCode.UNAVAILABLE, "replica died mid-stream")
                yield mesh_pb2.GenerateResponse(text=token, tier=self.tier)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def close(self) -> None:
        """Nothing to release (stands where a tier adapter would be)."""


def unavailable(message: str = "tier down") -> StatusError:
    return StatusError(grpc.StatusCode.UNAVAILABLE, message)


async def drain(stream: AsyncIterator[mesh_pb2.GenerateResponse]) -> list[mesh_pb2.GenerateResponse]:
    return [r async for r in stream]

from collections.abc import AsyncIterator

import grpc
import pytest

from router.call import Call
from router.policies.tier_choice import TierChoice
from router.validation import resolve
from tiermesh.config import Settings
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class RecordingTier:
    """A backend that answers with its own name and remembers the calls it got."""

    def __init__(self, tier: mesh_pb2.Tier.ValueType) -> None:
        self.tier = tier
        self.calls: list[Call] = []

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        self.calls.append(call)
        yield mesh_pb2.GenerateResponse(text="hi", tier=self.tier)


def a_call(task: mesh_pb2.Task.ValueType) -> Call:
    request = mesh_pb2.GenerateRequest(npc_id="npc-1", prompt="hello", task=task)
    return resolve(request, Settings(), 5.0)


async def test_each_task_goes_to_the_first_tier_of_its_route() -> None:
    gold, silver = RecordingTier(mesh_pb2.TIER_GOLD), RecordingTier(mesh_pb2.TIER_SILVER)
    choice = TierChoice(
        {"intent": ["gold", "silver"], "dialogue": ["silver", "gold"]},
        {"gold": gold, "silver": silver},
    )
    [intent] = [r async for r in choice.generate(a_call(mesh_pb2.TASK_INTENT))]
    [dialogue] = [r async for r in choice.generate(a_call(mesh_pb2.TASK_DIALOGUE))]
    assert intent.tier == mesh_pb2.TIER_GOLD
    assert dialogue.tier == mesh_pb2.TIER_SILVER
    assert [c.task for c in gold.calls] == ["intent"]
    assert [c.task for c in silver.calls] == ["dialogue"]


async def test_tiers_without_a_backend_are_skipped() -> None:
    silver = RecordingTier(mesh_pb2.TIER_SILVER)
    choice = TierChoice({"bark": ["gold", "silver"]}, {"silver": silver})
    assert choice.plan("bark") == ["silver"]
    [reply] = [r async for r in choice.generate(a_call(mesh_pb2.TASK_BARK))]
    assert reply.tier == mesh_pb2.TIER_SILVER


async def test_a_task_no_tier_serves_is_unavailable() -> None:
    choice = TierChoice({"bark": ["gold"]}, {"silver": RecordingTier(mesh_pb2.TIER_SILVER)})
    with pytest.raises(StatusError) as caught:
        [r async for r in choice.generate(a_call(mesh_pb2.TASK_LONGFORM))]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "longform" in caught.value.message

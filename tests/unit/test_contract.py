"""Invariants of the protobuf contracts that the router relies on."""

from google.protobuf.descriptor import Descriptor

from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2


def shape(descriptor: Descriptor) -> dict[int, tuple[str, int, str]]:
    return {
        f.number: (f.name, f.type, f.message_type.full_name if f.message_type else "")
        for f in descriptor.fields
    }


def test_tier_response_is_wire_compatible_with_the_public_response() -> None:
    # The router decodes tier bytes as the public message: same numbers, names, types.
    assert shape(tier_pb2.GenerateResponse.DESCRIPTOR) == shape(mesh_pb2.GenerateResponse.DESCRIPTOR)
    for number, field in tier_pb2.GenerateResponse.DESCRIPTOR.fields_by_number.items():
        public = mesh_pb2.GenerateResponse.DESCRIPTOR.fields_by_number[number]
        if field.enum_type is not None:
            assert public.enum_type is not None
            assert field.enum_type.full_name == public.enum_type.full_name


def test_tier_bytes_decode_as_the_public_response() -> None:
    tier = tier_pb2.GenerateResponse(
        text="Halt!", index=3, tier=mesh_pb2.TIER_SILVER, finish_reason=mesh_pb2.FINISH_REASON_STOP
    )
    tier.usage.completion_tokens = 7
    public = mesh_pb2.GenerateResponse.FromString(tier.SerializeToString())
    assert (public.text, public.index, public.tier) == ("Halt!", 3, mesh_pb2.TIER_SILVER)
    assert public.usage.completion_tokens == 7


def test_public_names_game_teams_code_against() -> None:
    request_fields = set(mesh_pb2.GenerateRequest.DESCRIPTOR.fields_by_name)
    assert {"npc_id", "session_id", "prompt", "task", "max_tokens", "sampling", "persona"} <= (request_fields)
    tasks = {"TASK_INTENT", "TASK_BARK", "TASK_DIALOGUE", "TASK_LONGFORM"}
    assert set(mesh_pb2.Task.keys()) >= tasks
    assert set(mesh_pb2.Tier.keys()) >= {"TIER_GOLD", "TIER_SILVER", "TIER_BRONZE", "TIER_CACHE"}
    # The deadline is the budget: no timeout field may creep into the request.
    assert not {n for n in request_fields if "timeout" in n or "deadline" in n}

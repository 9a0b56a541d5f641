import grpc
import pytest

from ops.settings import Settings
from router.settings import Persona
from router.validation import resolve
from tests.fakes import request
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

SETTINGS = Settings(personas={"guard-1": Persona(system="You are Brom, a guard.", intents=["GREET", "WARN"])})


def rejection(req: mesh_pb2.GenerateRequest, remaining: float | None = 5.0) -> StatusError:
    with pytest.raises(StatusError) as caught:
        resolve(req, SETTINGS.router_config(), remaining)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt must not be empty"),
        ({"prompt": "  \n\t"}, grpc.StatusCode.INVALID_ARGUMENT, "prompt must not be empty"),
        ({"prompt": "x" * 16_385}, grpc.StatusCode.INVALID_ARGUMENT, "16385 characters"),
        ({"task": mesh_pb2.TASK_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "TASK_INTENT"),
        ({"task": 42}, grpc.StatusCode.INVALID_ARGUMENT, "task 42 is not one of"),
        ({"max_tokens": 513}, grpc.StatusCode.INVALID_ARGUMENT, "over the dialogue limit of 512"),
        ({"task": mesh_pb2.TASK_BARK, "max_tokens": 33}, grpc.StatusCode.INVALID_ARGUMENT, "bark"),
        ({"npc_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "npc_id"),
        ({"npc_id": "guard 1"}, grpc.StatusCode.INVALID_ARGUMENT, "npc_id 'guard 1'"),
        ({"npc_id": "-guard"}, grpc.StatusCode.INVALID_ARGUMENT, "npc_id"),
        ({"npc_id": "g" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "npc_id"),
        ({"session_id": "a/b"}, grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        (
            {"sampling": mesh_pb2.SamplingOptions(temperature=2.5)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature 2.5",
        ),
        (
            {"sampling": mesh_pb2.SamplingOptions(temperature=float("nan"))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature",
        ),
        (
            {"sampling": mesh_pb2.SamplingOptions(top_p=0)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_p",
        ),
        (
            {"sampling": mesh_pb2.SamplingOptions(stop=[""])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.stop",
        ),
    ],
)
def test_bad_input_gets_a_precise_status(
    fields: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    error = rejection(request(**fields))
    assert error.code == code
    assert words in error.message


def test_expired_deadline_is_deadline_exceeded() -> None:
    error = rejection(request(), remaining=0.0)
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_configured_persona_and_task_defaults_are_resolved() -> None:
    call = resolve(request(), SETTINGS.router_config(), time_remaining=2.0, now=100.0)
    assert call.task == "dialogue"
    assert call.messages[0].role == "system"
    assert call.messages[0].content == "You are Brom, a guard."
    assert call.messages[-1].role == "user"
    assert call.messages[-1].content == "Who goes there?"
    assert call.max_tokens == SETTINGS.router.tasks["dialogue"].default_max_tokens
    assert call.deadline == pytest.approx(102.0)


def test_persona_text_in_the_request_overrides_the_configured_one() -> None:
    call = resolve(request(persona="You are a talking cat."), SETTINGS.router_config(), 2.0)
    assert call.messages[0].content == "You are a talking cat."


def test_an_npc_without_a_persona_is_not_found_unless_the_call_brings_one() -> None:
    with pytest.raises(StatusError) as caught:
        resolve(request(npc_id="farmer-7"), SETTINGS.router_config(), 2.0)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "'farmer-7'" in caught.value.message
    call = resolve(request(npc_id="farmer-7", persona="You farm turnips."), SETTINGS.router_config(), 2.0)
    assert call.messages[0].content == "You farm turnips."


def test_no_deadline_uses_the_task_budget() -> None:
    call = resolve(request(task=mesh_pb2.TASK_INTENT), SETTINGS.router_config(), None, now=10.0)
    assert call.deadline == pytest.approx(10.0 + SETTINGS.router.tasks["intent"].default_deadline_s)


def test_explicit_max_tokens_within_limit_is_kept() -> None:
    assert resolve(request(max_tokens=512), SETTINGS.router_config(), 2.0).max_tokens == 512


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"intents": ["ATTACK", "FLEE", "ATTACK"]}, "duplicate intents: ATTACK"),
        ({"intents": [f"I{n}" for n in range(33)]}, "33 intents; the limit is 32"),
        ({"intents": ["attack"]}, "upper-case labels"),
        ({"intents": ["RUN AWAY"]}, "upper-case labels"),
        ({"npc_id": "farmer-9", "persona": "You farm turnips."}, "needs an intent set"),
    ],
)
def test_bad_intent_sets_are_invalid(fields: dict[str, object], words: str) -> None:
    error = rejection(request(task=mesh_pb2.TASK_INTENT, **fields))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.message


def test_intents_on_another_task_are_invalid() -> None:
    error = rejection(request(intents=["ATTACK"]))
    assert "only for TASK_INTENT" in error.message


def test_intents_come_from_the_request_or_the_persona() -> None:
    given = resolve(
        request(task=mesh_pb2.TASK_INTENT, intents=["TRADE", "FLEE"]), SETTINGS.router_config(), 1.0
    )
    assert given.intents == ("TRADE", "FLEE")
    configured = resolve(request(task=mesh_pb2.TASK_INTENT), SETTINGS.router_config(), 1.0)
    assert configured.intents == ("GREET", "WARN")

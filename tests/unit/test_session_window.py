"""The session window's start (router/policies/session.py `first_kept`): within the budget,
on a player's turn, and moving in steps, so that consecutive turns' prompts begin alike."""

from __future__ import annotations

import itertools

from router.policies.session import approx_tokens, first_kept
from tiermesh.v1 import mesh_pb2


def conversation(pairs: int) -> list[mesh_pb2.Turn]:
    turns = []
    for i in range(pairs):
        turns.append(
            mesh_pb2.Turn(speaker=mesh_pb2.SPEAKER_PLAYER, text=f"Player line {i}. " + "word " * (30 + i % 7))
        )
        turns.append(
            mesh_pb2.Turn(speaker=mesh_pb2.SPEAKER_NPC, text=f"Answer {i}. " + "reply " * (12 + i % 5))
        )
    return turns


def kept_tokens(turns: list[mesh_pb2.Turn], start: int) -> int:
    return sum(approx_tokens(t.text) for t in turns[start:])


def starts(budget: int, step: int, pairs: int = 40) -> list[int]:
    """The window's start as the conversation grows, a player's turn and an answer at a time."""
    full = conversation(pairs)
    return [first_kept(full[: 2 * n + 1], budget, step) for n in range(pairs)]


def test_a_conversation_within_the_budget_is_carried_whole() -> None:
    assert first_kept(conversation(3), budget=10_000, step=2_500) == 0
    assert first_kept([], budget=0, step=0) == 0


def test_stepped_starts_fit_the_budget_begin_with_the_player_and_rarely_move() -> None:
    budget, step = 768, 192
    full = conversation(40)
    biggest = max(approx_tokens(t.text) for t in full)
    seen = starts(budget, step)
    for n, start in enumerate(seen):
        turns = full[: 2 * n + 1]
        assert kept_tokens(turns, start) <= budget
        if start:
            assert turns[start].speaker == mesh_pb2.SPEAKER_PLAYER
            assert kept_tokens(turns, start) >= budget - step - 2 * biggest
    moves = sum(a != b for a, b in itertools.pairwise(seen))
    sliding = starts(budget, 0)
    sliding_moves = sum(a != b for a, b in itertools.pairwise(sliding))
    # Turn by turn, nearly every turn past the budget moves the start; in steps, about
    # one turn in three (a step is ~3 exchanges here).
    assert sliding_moves >= 25
    assert moves <= sliding_moves // 2


def test_without_a_step_the_window_is_the_newest_turns_that_fit() -> None:
    turns = conversation(20)
    start = first_kept(turns, budget=300, step=0)
    assert kept_tokens(turns, start) <= 300 < kept_tokens(turns, start - 1)


def test_a_turn_bigger_than_the_budget_leaves_no_history() -> None:
    turns = [mesh_pb2.Turn(speaker=mesh_pb2.SPEAKER_PLAYER, text="long " * 1000)]
    assert first_kept(turns, budget=100, step=25) == 1

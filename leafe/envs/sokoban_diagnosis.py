"""What went wrong in a Sokoban episode, computed exactly with the solver (the ``env`` reflector).

``diagnose(task, actions)`` replays the episode turn by turn and returns the first decisive
mistake as a :class:`Diagnosis`: the 1-based turn to roll back to and a summary saying what went
wrong and what to do instead (the solver's first move from the state before that turn).

Mistakes, in order of priority:

1. the push after which the room became unsolvable (a deadlock can never be undone);
2. otherwise the first turn that did not bring the player closer to solving the room (shortest
   solution length did not drop): a reply without an action, an invalid action, walking into a
   wall, a blocked push, or a detour (this also catches back-and-forth loops).

Returns ``None`` for a solved episode, or when every turn was on a shortest path (the episode
only ran out of steps). When the solver cannot decide within its search cap (large multi-box
rooms), priority 2 falls back to turns that changed nothing.

Environments add this capability with a ``diagnose(task, actions)`` method; ``Diagnosis`` is
the type every such method returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leafe.envs.base import Diagnosis
from leafe.envs.sokoban import ACTION_WORDS, SokobanEnv, SokobanState
from leafe.envs.sokoban_solver import SearchLimitExceeded, is_corner_deadlock, solve
from leafe.types import Task

_MAX_NODES = 50_000  # per solver call; rooms of the default size need far fewer


@dataclass(frozen=True)
class _Turn:
    number: int
    action: str | None
    before: SokobanState
    after: SokobanState
    info: dict[str, Any]


def _distance(state: SokobanState) -> int | None:
    """Shortest solution length from ``state`` (``None``: unsolvable); may raise SearchLimitExceeded."""
    plan = solve(state.room.walls, state.room.goals, state.boxes, state.player, max_nodes=_MAX_NODES)
    return None if plan is None else len(plan)


def _instead(state: SokobanState) -> str:
    """' Instead, move up.' from the solver, or '' when it cannot tell."""
    try:
        plan = solve(state.room.walls, state.room.goals, state.boxes, state.player, max_nodes=_MAX_NODES)
    except SearchLimitExceeded:
        return ""
    return f" Instead, move {plan[0]}." if plan else ""


def _replay(task: Task, actions: Sequence[str | None]) -> list[_Turn] | None:
    """The turns of the episode, or ``None`` if it solved the room."""
    env = SokobanEnv(terminate_on_deadlock=False)
    env.reset(task)
    turns = []
    for number, action in enumerate(actions, start=1):
        before = env.snapshot()
        info: dict[str, Any] = {"parse_error": True}
        if action is not None:
            _obs, _reward, _terminated, _truncated, info = env.step(action)
        turns.append(_Turn(number, action, before, env.snapshot(), info))
        if info.get("success"):
            return None
    return turns


def _push_text(turn: _Turn) -> str:
    (box,) = turn.after.boxes - turn.before.boxes
    return f"At step {turn.number} you pushed the box {turn.action} to row {box[0]}, col {box[1]}"


def _deadlock_summary(turn: _Turn) -> str:
    (box,) = turn.after.boxes - turn.before.boxes
    room = turn.after.room
    if is_corner_deadlock(room.walls, room.goals, box):
        why = "where it is stuck in a corner and can never reach a goal"
    else:
        why = "after which the puzzle can no longer be solved"
    return f"{_push_text(turn)}, {why}.{_instead(turn.before)}"


def _wasted_summary(turn: _Turn) -> str:
    if turn.action is None:
        what = f"At step {turn.number} your reply had no 'Action:' line, so nothing happened."
    elif turn.info.get("invalid_action"):
        what = f"At step {turn.number} '{turn.action}' was not a valid action; use one of {', '.join(ACTION_WORDS)}."
    elif turn.after == turn.before:
        what = f"At step {turn.number} moving {turn.action} changed nothing (a wall or a blocked box was in the way)."
    elif turn.info.get("pushed"):
        what = f"{_push_text(turn)}, which does not bring it closer to a goal."
    else:
        what = f"At step {turn.number} moving {turn.action} did not bring you closer to solving the puzzle."
    return what + _instead(turn.before)


def _first_wasted(turns: list[_Turn]) -> _Turn | None:
    """The first turn that did not shorten the solution (or, without a solver verdict, changed nothing)."""
    try:
        distances = [_distance(turns[0].before)] + [_distance(turn.after) for turn in turns]
    except SearchLimitExceeded:
        return next((turn for turn in turns if turn.after == turn.before), None)
    for turn, before, after in zip(turns, distances, distances[1:]):
        if before is not None and (after is None or after >= before):
            return turn
    return None


def diagnose(task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
    """The first decisive mistake of a Sokoban episode (see the module docstring).

    Args:
        task: the Sokoban task that was played.
        actions: one entry per turn, in order: the action sent to the environment, or ``None``
            for a turn whose reply had no parseable action.
    """
    turns = _replay(task, actions)
    if not turns:
        return None
    deadlock = next((turn for turn in turns if turn.info.get("deadlock") and not turn.before.deadlock), None)
    if deadlock is not None:
        return Diagnosis(deadlock.number, _deadlock_summary(deadlock))
    wasted = _first_wasted(turns)
    return None if wasted is None else Diagnosis(wasted.number, _wasted_summary(wasted))

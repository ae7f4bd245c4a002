"""When to reflect: the interval schedule and the feedback signals, on real environments."""

import pytest

from leafe.envs.sokoban import SokobanEnv, SokobanTasks
from leafe.method.trigger import reflection_points, should_reflect, trouble
from leafe.types import Step, Task
from tests.line_world import TrapLineWorld
from tests.method.scripted import deadlock_path, play_steps as _play


LINE = Task("line/3", "train", {"goal": 3})


def test_interval_schedule_and_end():
    initial, steps = _play(TrapLineWorld(), LINE, ["right"] * 2 + ["left"] * 2 + ["right"])
    assert [should_reflect(steps, t, "interval", 2, initial, ended=False) for t in range(1, 6)] == [
        None, "interval", None, "interval", None,
    ]
    assert should_reflect(steps, 5, "interval", 2, initial, ended=True) == "end"
    assert reflection_points(steps, 1, "interval", 2, initial, ended=True, limit=5) == [(2, "interval"), (4, "interval"), (5, "end")]
    assert reflection_points(steps, 3, "interval", 2, initial, ended=True, limit=2) == [(4, "interval"), (5, "end")]
    assert reflection_points(steps, 1, "interval", 2, initial, ended=False, limit=1) == [(4, "interval")]


def test_feedback_signals_on_line_world():
    initial, steps = _play(TrapLineWorld(), LINE, ["right", "jump", None, "left", "right", "left", "left"])
    reasons = [trouble(steps, t, initial) for t in range(1, len(steps) + 1)]
    # right -> 1; jump: invalid; no action; left -> 0: seen before; right -> 1 again; left -> 0; left -> trap
    assert reasons == [None, "invalid_action", "parse_error", "repeated_state", "repeated_state", "repeated_state", "deadlock"]
    points = reflection_points(steps, 1, "feedback", 4, initial, ended=True, limit=3)
    assert points == [(5, "repeated_state"), (6, "repeated_state"), (7, "end")]


def test_feedback_signals_on_sokoban():
    task = SokobanTasks().tasks("train", 1)[0]
    env = SokobanEnv()
    env.reset(task)
    expert = env.expert_actions(task)
    path = deadlock_path(task)
    # Find a wall to walk into from the start.
    wall = next(a for a in ("up", "down", "left", "right") if _play(SokobanEnv(), task, [a])[1][0].info["moved"] is False)
    initial, steps = _play(SokobanEnv(), task, [wall, expert[0]])
    assert trouble(steps, 1, initial) == "no_change"
    assert trouble(steps, 2, initial) is None
    initial, steps = _play(SokobanEnv(), task, path)
    assert trouble(steps, len(steps), initial) == "deadlock"


def test_error_text_in_feedback_line():
    step = Step("p", "c", "open door", "Error: the door is locked.\nYou are in a hall.", 0.0, False, False, 1, 1, {})
    assert trouble([step], 1, "Welcome.\nYou are in a room.") == "error_text"


def test_unknown_trigger_is_rejected():
    with pytest.raises(ValueError, match="unknown trigger"):
        should_reflect([], 1, "sometimes", 2, "", ended=False)

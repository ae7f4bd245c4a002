"""The Sokoban diagnosis behind the ``env`` reflector."""

import pytest

from leafe.envs.sokoban import SokobanEnv, SokobanTasks, room_for
from leafe.envs.sokoban_diagnosis import diagnose
from leafe.envs.sokoban_solver import MOVES, solve
from tests.method.scripted import deadlock_path


@pytest.fixture(scope="module")
def tasks():
    return SokobanTasks().tasks("train", 6)


def _state_after(task, actions):
    env = SokobanEnv(terminate_on_deadlock=False)
    env.reset(task)
    for action in actions:
        env.step(action)
    return env.snapshot()


def _solver_first(task, actions):
    state = _state_after(task, actions)
    return solve(state.room.walls, state.room.goals, state.boxes, state.player)[0]


def test_deadlock_push_is_named_with_where_and_what_instead(tasks):
    for task in tasks:
        path = deadlock_path(task)
        diagnosis = diagnose(task, path)
        assert diagnosis.rollback_step == len(path)
        box = next(iter(_state_after(task, path).boxes))
        assert f"At step {len(path)} you pushed the box {path[-1]} to row {box[0]}, col {box[1]}" in diagnosis.summary
        assert diagnosis.summary.endswith(f"Instead, move {_solver_first(task, path[:-1])}.")
        # Moves after the deadlock do not change the verdict.
        assert diagnose(task, path + ["up", "down"]) == diagnosis


def test_solved_and_optimal_episodes_have_no_diagnosis(tasks):
    task = tasks[0]
    expert = SokobanEnv().expert_actions(task)
    assert diagnose(task, expert) is None
    assert diagnose(task, expert[:-1]) is None  # on a shortest path, only out of steps
    assert diagnose(task, []) is None


def test_wasted_turns_are_diagnosed(tasks):
    task = tasks[0]
    expert = SokobanEnv().expert_actions(task)
    room = room_for(task)
    wall = next(a for a in MOVES if room.walls[room.player[0] + MOVES[a][0], room.player[1] + MOVES[a][1]])
    cases = [
        ("no 'Action:' line", [expert[0], None]),
        ("'jump' was not a valid action", [expert[0], "jump"]),
        ("changed nothing", [wall]),
    ]
    for phrase, actions in cases:
        diagnosis = diagnose(task, actions)
        assert diagnosis.rollback_step == len(actions) and phrase in diagnosis.summary
        assert diagnosis.summary.endswith(f"Instead, move {_solver_first(task, actions[:-1])}.")


def test_walking_back_is_a_detour_at_the_step_that_left_the_shortest_path():
    checked = 0
    for task in SokobanTasks().tasks("train", 30):
        expert = SokobanEnv().expert_actions(task)
        back = {"up": "down", "down": "up", "left": "right", "right": "left"}[expert[0]]
        if _state_after(task, expert[:1]).boxes != room_for(task).boxes or expert[1] == back:
            continue  # the first move pushes, or walking back is itself optimal
        diagnosis = diagnose(task, [expert[0], back, expert[0], expert[1]])
        assert diagnosis.rollback_step == 2
        instead = _solver_first(task, expert[:1])
        assert diagnosis.summary == f"At step 2 moving {back} did not bring you closer to solving the puzzle. Instead, move {instead}."
        checked += 1
    assert checked > 0
